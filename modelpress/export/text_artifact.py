"""The export step for text classifiers: the text model artifact -> the ONNX artifact (model.onnx
with dynamic batch and sequence axes, verified against torch on random token batches and on the
test split, meta.json, and the tokenizer beside it so every later step and the server tokenise
with the model's own)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.timing import timed
from modelpress.data.text import TextDataset, load_text_dataset
from modelpress.export import runtime
from modelpress.export.text_export import OPSET, OUTPUT_NAME, export_text_onnx
from modelpress.export.text_runtime import predict_text_onnx
from modelpress.models import text as text_models
from modelpress.models import text_sources
from modelpress.models.text_shapes import attention_size
from modelpress.training.text_loop import count_params, predict_text

TEXT_INPUT = "text"  # what a client sends the served model: a BYTES tensor of UTF-8 strings
TOKENIZER_DIR = text_models.TOKENIZER_DIR
VERIFY_ROWS = 256


def text_input(max_length: int, token_inputs: list[str], segments: int) -> dict:
    """What a client sends a served text model, for meta.json, config.pbtxt and model metadata
    (`segments`: how many token type ids the model has embeddings for)."""
    return {"kind": "text", "name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1, 1], "max_length": int(max_length),
            "token_inputs": list(token_inputs), "tokenizer": TOKENIZER_DIR, "segments": int(segments),
            "preprocessing": f"send raw UTF-8 strings: the server tokenises them with {TOKENIZER_DIR}/ beside "
                             f"model.onnx, truncating at {max_length} tokens (Triton: send token ids instead)"}


def copy_tokenizer(source_dir, dest: Path) -> None:
    """The tokenizer/ folder of an artifact into `dest` (an artifact being written)."""
    folder = local_path(source_dir) / TOKENIZER_DIR
    if not folder.is_dir():
        raise ModelpressError(f"{source_dir} has no {TOKENIZER_DIR}/ folder: a text model travels with the tokenizer "
                              "it was trained with; make it again with the train step")
    shutil.copytree(folder, dest / TOKENIZER_DIR)


def _verify_on_test(model, onnx_path: Path, ds: TextDataset, rtol: float, atol: float) -> dict:
    """ONNX Runtime against torch on the first test texts, batched as the scorers batch them."""
    rows = {**{k: v[:VERIFY_ROWS] for k, v in ds.test.inputs().items()}, "y": ds.test.y[:VERIFY_ROWS]}
    ref = predict_text(model, rows)
    got = predict_text_onnx(str(onnx_path), rows)
    diff = np.abs(got - ref)
    if (diff > atol + rtol * np.abs(ref)).any():
        raise ModelpressError(f"the ONNX model differs from torch on the test split beyond tolerance (rtol {rtol}, "
                              f"atol {atol}): max abs diff {diff.max():.3g}; try exporter='dynamo' or a newer opset")
    return {"test_max_abs_diff": float(diff.max()), "test_argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
            "test_rows_verified": int(len(ref))}


@timed
def export_text_step(model_dir: str, dataset_dir: str, out_dir: str, *, opset: int = OPSET, rtol: float = 1e-3,
                     atol: float = 1e-4, log: Callable[[str], None] = print) -> dict:
    """Export, verify and score a text model artifact; write model.onnx + meta.json + tokenizer/."""
    import onnx
    import onnxruntime as ort
    import torch

    model, spec = text_models.load_text_model(model_dir)
    heads, width = attention_size(model)
    ds = load_text_dataset(dataset_dir)
    max_length = int(spec.get("max_length") or ds.max_length)
    t0 = time.perf_counter()
    with atomic_dir(local_path(out_dir)) as tmp:
        path = tmp / runtime.ONNX_FILE
        exported = export_text_onnx(model, str(path), max_length=max_length, opset=opset, rtol=rtol, atol=atol)
        checked = _verify_on_test(model, path, ds, rtol, atol)
        copy_tokenizer(model_dir, tmp)
        logits = predict_text_onnx(str(path), ds.test)
        accuracy = float((logits.argmax(1) == ds.test.y).mean())
        length = int(ds.schema["token_lengths"]["p95"])
        card = ModelCard(
            framework="onnx", accuracy=accuracy, class_names=ds.class_names, task="classification",
            architecture=spec["architecture"], params=count_params(model),
            flops=text_sources.text_forward_flops(model, min(length, max_length)), input_shape=[-1, -1],
            extra={"format": "onnx", "opset": opset, "input_kind": "text", "input_name": TEXT_INPUT,
                   "output_name": OUTPUT_NAME, "max_length": max_length, "token_inputs": exported["inputs"],
                   "input": text_input(max_length, exported["inputs"], getattr(model.config, "type_vocab_size", 1) or 1), "exporter": exported["exporter"],
                   "max_abs_diff": exported["max_abs_diff"], "max_rel_diff": exported["max_rel_diff"], **checked,
                   "size_bytes": path.stat().st_size, "layers": int(model.config.num_hidden_layers),
                   "heads": heads, "attention_width": width, "hidden": int(model.config.hidden_size),
                   "source_model": str(local_path(model_dir))},
            detail={"source_spec": spec, "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                                                      "onnxruntime": ort.__version__}})
        write_json_atomic(tmp / runtime.META_FILE, card.file_metadata())
    seconds = time.perf_counter() - t0
    size = card.extra["size_bytes"]
    log(f"[export-onnx] text model, opset {opset}, inputs {exported['inputs']} (batch and sequence dynamic), "
        f"{size / 1e6:.2f} MB, max abs diff vs torch {max(exported['max_abs_diff'], checked['test_max_abs_diff']):.2e}, "
        f"ONNX Runtime test accuracy {accuracy:.4f}, {seconds:.1f}s")
    metrics = {"test_accuracy": accuracy, "max_abs_diff": exported["max_abs_diff"],
               "test_max_abs_diff": checked["test_max_abs_diff"], "size_bytes": size, "opset": opset,
               "export_seconds": seconds}
    return StepResult(card, metrics).as_dict()
