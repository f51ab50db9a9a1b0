"""The compression steps for text classifiers, artifact in and artifact out: post-training
quantisation (and the fused fp32 graph) of the ONNX artifact, DistilBERT-style distillation and
structured pruning of the text model artifact. `quantisation.quantise`, `distillation.distil` and
`pruning.prune` hand text work here, so the components and pipelines are the same for images,
tables and text."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

from modelpress.compression.text_distillation import distil_text
from modelpress.compression.text_quantisation import PRECISIONS, quantise_text
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.core.results import ModelCard, StepResult
from modelpress.data.dataset import lineage
from modelpress.data.text import load_text_dataset
from modelpress.export import runtime
from modelpress.export.text_artifact import copy_tokenizer
from modelpress.export.text_runtime import score_text_onnx
from modelpress.models import text as text_models
from modelpress.models import text_sources
from modelpress.training.loop import TrainSettings
from modelpress.training.text_step import text_card
from modelpress.data.token_batches import trim_batch
from modelpress.training.text_loop import count_params, score_text, train_text


def quantise_text_step(onnx_dir: str, dataset_dir: str, out_dir: str, *, method: str, calibration_samples: int,
                       calibration_method: str, per_channel: bool, reduce_range: bool | None, seed: int = 0,
                       log: Callable[[str], None] = print) -> dict:
    """Quantise (or fuse) a text ONNX artifact, score it on the test split, write the ONNX artifact with
    its tokenizer."""
    import onnxruntime as ort

    ds = load_text_dataset(dataset_dir)
    meta_in = runtime.read_meta(onnx_dir)
    t0 = time.perf_counter()
    with atomic_dir(local_path(out_dir)) as tmp:
        out = tmp / runtime.ONNX_FILE
        result = quantise_text(onnx_dir, str(out), method, calibration=ds.train, calibration_samples=calibration_samples,
                               calibration_method=calibration_method, per_channel=per_channel,
                               reduce_range=reduce_range, seed=seed, num_heads=int(meta_in.get("heads") or 0),
                               hidden_size=int(meta_in.get("attention_width") or meta_in.get("hidden") or 0))
        copy_tokenizer(onnx_dir, tmp)
        test = score_text_onnx(str(out), ds.test)
        card = ModelCard.from_metadata(meta_in).evolve(
            drop=("size_bytes", "max_abs_diff", "max_rel_diff", "test_max_abs_diff", "test_argmax_agreement"),
            framework="onnx", precision=PRECISIONS[method], accuracy=test["accuracy"], task="classification",
            extra={"format": "onnx", "quantisation": result["settings"], "size_bytes": result["size_bytes"],
                   "source_size_bytes": result["source_size_bytes"],
                   "accuracy_note": "scored with ONNX Runtime CPUExecutionProvider", "cpu_model": result["cpu_model"],
                   "cpu_flags": result["cpu_flags"], "onnxruntime": ort.__version__,
                   "quantisation_nodes": result["quantisation_nodes"]})
        write_json_atomic(tmp / runtime.META_FILE, card.file_metadata())
    seconds = time.perf_counter() - t0
    log(f"[quantise] {method} (text): {result['source_size_bytes'] / 1e6:.2f} MB -> {result['size_bytes'] / 1e6:.2f} MB, "
        f"test accuracy {test['accuracy']:.4f}, argmax agreement with fp32 on a check batch "
        f"{result['check_argmax_agreement']:.2f}, {seconds:.1f}s")
    metrics = {"size_bytes": result["size_bytes"], "size_ratio": result["size_ratio"], "wall_seconds": seconds,
               "test_accuracy": test["accuracy"]}
    if meta_in.get("accuracy") is not None:
        metrics["accuracy_delta"] = test["accuracy"] - meta_in["accuracy"]
    return StepResult(card, metrics).as_dict()


def _student(teacher, architecture: str, args: dict, ds):
    """What distil_text starts the student from: a number of teacher layers (None: half) or a model."""
    text_sources.check_text_arguments(architecture, args, "student_architecture", "student_args")
    args = text_sources.integral(args)
    if architecture == text_models.FROM_TEACHER:
        return args.get("layers")
    if architecture == text_models.BERT_CONFIG:
        return text_models.bert_from_config(int(teacher.config.vocab_size), len(ds.class_names),
                                            **{"max_position": ds.max_length, **args})
    raise ModelpressError(f"student_architecture {architecture!r}: a text teacher takes {text_models.FROM_TEACHER!r} "
                          "or 'bert'")


def distil_text_step(teacher_dir: str, dataset_dir: str, out_dir: str, *, student_architecture: str,
                     student_args: dict | None, temperature: float, alpha: float, settings: TrainSettings,
                     log: Callable[[str], None] = print) -> dict:
    """Distil a text model artifact into a smaller student, score both on the test split, save the student."""
    ds = load_text_dataset(dataset_dir)
    teacher, teacher_spec = text_models.load_text_model(teacher_dir)
    result = distil_text(teacher, _student(teacher, student_architecture, dict(student_args or {}), ds), ds.train, ds.validation, temperature=temperature, alpha=alpha,
                         epochs=settings.epochs, learning_rate=settings.learning_rate, batch_size=settings.batch_size,
                         seed=settings.seed, weight_decay=settings.weight_decay, device=settings.device,
                         test_split=ds.test, log=log)
    student, scores = result["model"], result["scores"]
    distillation = {"temperature": temperature, "alpha": alpha, "student_architecture": student_architecture,
                    "student_args": dict(student_args or {}), "student_start": result["settings"]["student_start"],
                    "settings": asdict(settings)}
    spec = text_models.save_text_model(student, str(local_path(teacher_dir) / text_models.TOKENIZER_DIR), out_dir, {
        "architecture": teacher_spec["architecture"], "class_names": ds.class_names, "max_length": ds.max_length,
        "task": "classification", "distillation": distillation, "teacher": str(local_path(teacher_dir)),
        "dataset": lineage(ds.schema)})
    s_acc, t_acc = scores["student_test_accuracy"], scores["teacher_test_accuracy"]
    card = text_card(student, ds, spec, s_acc, {"teacher_accuracy": t_acc, "student_of": teacher_spec["architecture"]})
    metrics = {"student_accuracy": s_acc, "teacher_accuracy": t_acc, "accuracy_ratio": s_acc / t_acc if t_acc else 0.0,
               "student_params": scores["student_params"], "teacher_params": scores["teacher_params"],
               "params_ratio": scores["params_ratio"], "student_layers": scores["student_layers"],
               "teacher_layers": scores["teacher_layers"], "epochs_run": scores["epochs_run"]}
    log(f"[distil] text student: {scores['student_layers']} of {scores['teacher_layers']} layers, "
        f"{count_params(student):,} params; test accuracy {s_acc:.4f} vs teacher {t_acc:.4f}")
    return StepResult(card, metrics).as_dict()


def prune_text_step(model_dir: str, dataset_dir: str, out_dir: str, *, method: str, amount: float,
                    settings: TrainSettings, log: Callable[[str], None] = print) -> dict:
    """Remove about `amount` of every layer's attention heads and feed-forward neurons, fine-tune,
    save. A model Torch-Pruning cannot prune is skipped: the output is a skip note naming why, so
    the later steps pass it over and the run's summary says so."""
    import torch

    from modelpress.compression.text_pruning import check_amount, prune_text_model
    from modelpress.core.results import write_skipped

    if method != "structured":
        raise ModelpressError(f"text models are pruned structurally (attention heads and feed-forward neurons); "
                              f"method {method!r} does not apply: use method structured")
    amount = check_amount(amount)
    ds = load_text_dataset(dataset_dir)
    model, spec = text_models.load_text_model(model_dir)
    before = score_text(model, ds.test)["accuracy"]
    example = {k: torch.from_numpy(v) for k, v in trim_batch(ds.train.inputs(), range(min(8, len(ds.train.y))),
                                                              text_models.model_inputs(model)).items()}
    try:
        pruned, report = prune_text_model(model, amount=amount, example_inputs=example)
    except ModelpressError as exc:
        reason = str(exc)
        write_skipped(out_dir, "prune", reason)
        log(f"[prune] skipped: {reason}")
        return StepResult(metadata={"skipped": True, "reason": reason}).as_dict()
    before_finetune = score_text(pruned, ds.test)["accuracy"]
    log(f"[prune] heads {report['heads_before']} -> {report['heads_after']}, feed-forward neurons "
        f"{report['intermediate_before']} -> {report['intermediate_after']}, params {report['params_before']:,} -> "
        f"{report['params_after']:,}; test accuracy {before:.4f} -> {before_finetune:.4f} before fine-tuning")
    t0 = time.perf_counter()
    fitted = train_text(pruned, ds.train, ds.validation, epochs=settings.epochs, learning_rate=settings.learning_rate,
                        batch_size=settings.batch_size, seed=settings.seed, weight_decay=settings.weight_decay,
                        device=settings.device, log=log, label="prune fine-tune")
    pruned = fitted["model"]
    after = score_text(pruned, ds.test)
    pruning = {"method": "structured (attention heads + feed-forward neurons)", "amount": amount,
               "importance": report["importance"], "layers": report["layers"], "finetune": asdict(settings)}
    saved = text_models.save_text_model(pruned, str(local_path(model_dir) / text_models.TOKENIZER_DIR), out_dir, {
        **{k: v for k, v in spec.items() if k not in ("layer_shapes", "pruning")},
        "layer_shapes": report["layer_shapes"], "pruning": pruning})
    card = text_card(pruned, ds, saved, after["accuracy"], {
        "pruning_method": "structured", "pruning_amount": amount, "heads": report["heads_after"],
        "intermediate": report["intermediate_after"]})
    log(f"[prune] after fine-tuning: test accuracy {after['accuracy']:.4f} ({time.perf_counter() - t0:.1f}s)")
    metrics = {"params_before": report["params_before"], "params_after": report["params_after"],
               "heads_before": report["heads_before"], "heads_after": report["heads_after"],
               "intermediate_before": report["intermediate_before"], "intermediate_after": report["intermediate_after"],
               "accuracy_before": before, "accuracy_before_finetune": before_finetune,
               "accuracy_after": after["accuracy"], "accuracy_after_finetune": after["accuracy"]}
    return StepResult(card, metrics).as_dict()
