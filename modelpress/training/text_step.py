"""The train step for text datasets: a BERT-style encoder built from a config and trained from
scratch, or a Hugging Face ``save_pretrained`` folder (``hf:<folder>``) fine-tuned or taken as it
is (epochs 0); scored on the test split and saved as the text model artifact, its tokenizer
beside the weights."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

from modelpress.core.errors import ModelpressError
from modelpress.core.results import ModelCard, StepResult
from modelpress.data.dataset import lineage
from modelpress.data.text import TextDataset, load_text_dataset
from modelpress.data.tokenizer import find_tokenizer_file
from modelpress.models import text as text_models
from modelpress.models import text_sources
from modelpress.models.text_heads import align_head
from modelpress.training.loop import TrainSettings, resolve_device
from modelpress.training.text_loop import count_params, score_text, train_text

WARMUP_FRACTION = 0.1


def text_card(model, ds: TextDataset, spec: dict, accuracy: float | None, extra: dict | None = None) -> ModelCard:
    """The model card of a torch text classifier: FLOPs at the dataset's 95th-percentile length."""
    length = int(ds.schema["token_lengths"]["p95"])
    return ModelCard(framework="pytorch", accuracy=accuracy, class_names=ds.class_names, task="classification",
                     architecture=spec["architecture"], params=count_params(model),
                     flops=text_sources.text_forward_flops(model, min(length, ds.max_length)),
                     input_shape=[ds.max_length],
                     extra={"input_kind": "text", "max_length": ds.max_length, "flops_length": length,
                            "layers": int(model.config.num_hidden_layers), "hidden": int(model.config.hidden_size),
                            **(extra or {})})


def check_tokenizer_matches(ds: TextDataset, architecture: str, dataset_dir: str) -> None:
    """An hf: model must read the ids of its own tokenizer, not of one trained on the data."""
    if not architecture.startswith(text_models.HF_PREFIX) or ds.schema["tokenizer"]["source"] != "trained":
        return
    folder = text_sources.hf_folder(architecture)
    try:
        find_tokenizer_file(folder)
        where = "comes with its own tokenizer"
    except ModelpressError:
        where = "was trained with a tokenizer (none is in its folder)"
    raise ModelpressError(f"{architecture} {where}, but the dataset {dataset_dir} was tokenised with one trained on "
                          "the data, so the ids would mean other words to the model. Set tokenizer to the model's "
                          "tokenizer folder (run_local.py and submit.py use the hf: folder's own by default)")


def train_text_step(dataset_dir: str, out_dir: str, *, architecture: str, model_args: dict | None,
                    settings: TrainSettings, weights: str = "", replace_head: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """Build (or load), train (or take as it is), score and save a text classifier."""
    if weights:
        raise ModelpressError(f"weights is for torch state dicts of image and table models; a text model brings its "
                              f"weights in its folder: architecture hf:<folder> (got weights {weights!r})")
    pretrained = architecture.startswith(text_models.HF_PREFIX)
    if settings.epochs == 0 and not pretrained:
        raise ModelpressError("epochs 0 takes a trained model as it is: give it as architecture hf:<folder> "
                              "(a save_pretrained folder), or set epochs >= 1 to train the bert")
    if replace_head and not pretrained:
        raise ModelpressError("replace_head applies to an hf:<folder> model (its classifier is swapped for the "
                              "dataset's classes); a bert built from a config gets the right head already")
    if replace_head and settings.epochs == 0:
        raise ModelpressError("replace_head with epochs 0 would score an untrained classifier; fine-tune it "
                              "(epochs >= 1) or drop replace_head")
    ds = load_text_dataset(dataset_dir)
    check_tokenizer_matches(ds, architecture, dataset_dir)
    model, info = text_sources.build_text_model(
        architecture, dict(model_args or {}), vocab_size=int(ds.schema["vocab_size"]),
        num_labels=len(ds.class_names), max_length=ds.max_length, replace_head=replace_head, seed=settings.seed)
    head = align_head(model, ds.class_names, fresh=info.get("fresh_head") or [], replace_head=replace_head,
                      source=architecture, log=log) if pretrained else "new"
    if head == "fresh" and settings.epochs == 0:
        raise ModelpressError(f"{architecture} has no trained classifier (new: {info['fresh_head']}): it is an encoder "
                              "without a head; fine-tune it (epochs >= 1) with replace_head, or give a sequence "
                              "classifier's folder")
    if int(model.config.vocab_size) < int(ds.schema["vocab_size"]):
        raise ModelpressError(f"the dataset's tokenizer has {ds.schema['vocab_size']} tokens but {architecture}'s "
                              f"embedding has {model.config.vocab_size}: use the model's own tokenizer")
    kind = "as-is" if settings.epochs == 0 else ("fine-tune" if pretrained else "scratch")
    what = {"scratch": "from scratch (a bert built from model_args, random weights)",
            "fine-tune": f"fine-tune {architecture}" + (" with a fresh classifier head" if replace_head else ""),
            "as-is": f"as-is: {architecture} scored, not trained"}[kind]
    log(f"[train] start: {what}; {count_params(model):,} parameters, {model.config.num_hidden_layers} layers, "
        f"hidden {model.config.hidden_size}; {len(ds.train.y)} training texts, max_length {ds.max_length}")
    if settings.optimizer != "adamw":
        log(f"[train] text models train with AdamW (BERT's recipe); optimizer {settings.optimizer!r} is not used")
    device = resolve_device(settings.device)
    fitted = None
    t0 = time.perf_counter()
    if kind != "as-is":
        fitted = train_text(model, ds.train, ds.validation, epochs=settings.epochs,
                            learning_rate=settings.learning_rate, batch_size=settings.batch_size, seed=settings.seed,
                            warmup_fraction=WARMUP_FRACTION, weight_decay=settings.weight_decay,
                            patience=settings.patience, device=str(device), log=log, label="train")
        model = fitted["model"]
    seconds = time.perf_counter() - t0
    test = score_text(model, ds.test)
    start = {"start": kind, "replace_head": bool(replace_head), "head": head}
    spec = text_models.save_text_model(model, ds.tokenizer_dir, out_dir, {
        **info, "class_names": ds.class_names, "max_length": ds.max_length, "train_settings": asdict(settings),
        "task": "classification", "dataset": lineage(ds.schema), **start})
    card = text_card(model, ds, spec, test["accuracy"], {"start": kind})
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "params": card.params,
               "forward_flops_per_example": card.flops, "epochs_run": fitted["scores"]["epochs_run"] if fitted else 0}
    if fitted:
        samples = sum(r["samples"] for r in fitted["history"])
        metrics.update({"best_val_accuracy": fitted["scores"]["val_accuracy"],
                        "best_val_loss": fitted["scores"]["val_loss"],
                        "final_train_loss": fitted["history"][-1]["train_loss"], "wall_seconds": seconds,
                        "samples_per_s": samples / seconds if seconds else 0.0})
    log(f"[train] test accuracy {test['accuracy']:.4f} on {len(ds.test.y)} texts"
        + (f" after {metrics['epochs_run']} epoch(s), {seconds:.1f}s" if fitted else " (taken as it is)"))
    return StepResult(card, metrics, confusion_matrix=test["confusion_matrix"],
                      extra={"history": fitted["history"] if fitted else []}).as_dict()

