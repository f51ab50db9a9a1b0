"""ONNX model artifacts and ONNX Runtime sessions.

An ONNX model artifact is a directory with ``model.onnx`` (weights embedded) and
``meta.json``. Functions here accept either the directory or the file itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, read_json

ONNX_FILE = "model.onnx"
META_FILE = "meta.json"
ORT_SUFFIX = ".ort"  # ONNX Runtime's own (flatbuffer) format: edge export writes it
# Names of the input normalisation's constants (models.InputNormalised's buffers) in exported graphs.
NORMALISATION_CONSTANTS = ("mean", "inv_std", "target_mean", "target_std")
# ONNX Runtime 1.31's CPU SkipLayerNormalization kernel is several times slower than the Add +
# LayerNormalization it replaces: in a 4-layer BERT (hidden 256, 128 tokens, 1 thread, AVX-512
# EPYC) its 8 nodes took 32 % of the dynamic-int8 model's time, and turning the fusion off took
# batch-1 p50 from 3.05 to 2.10 ms. Only transformer graphs have the Add -> LayerNorm pattern.
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def onnx_file(path: str | os.PathLike) -> Path:
    p = local_path(path)
    if p.is_dir():
        p = p / ONNX_FILE
    if not p.exists():
        raise ModelpressError(f"no ONNX model at {path}: expected a model.onnx file or a "
                              "directory holding one (the export-onnx step writes it)")
    return p


def read_meta(path: str | os.PathLike) -> dict:
    p = local_path(path)
    meta = (p if p.is_dir() else p.parent) / META_FILE
    return read_json(meta) if meta.exists() else {}


def load_onnx(path: str | os.PathLike):
    """onnx.load with a clear error for files that are not ONNX or are truncated."""
    import onnx

    p = onnx_file(path)
    try:
        model = onnx.load(str(p))
    except Exception as exc:
        raise ModelpressError(f"{p} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
                              "it may be truncated or another format. Re-export it.") from None
    if not model.graph.node:
        raise ModelpressError(f"{p} holds no ONNX graph (empty or not an ONNX file); re-export it")
    return model


def check_onnx(path: str | os.PathLike) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(onnx_file(path)), full_check=True)
    except Exception as exc:
        raise ModelpressError(f"{path} fails the ONNX checker: {exc}") from None


def session_options(threads: int | None = None):
    """ONNX Runtime session options: quiet, and with `threads` fixed intra-op threads (benchmarks must)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def open_session(path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session straight from a .onnx or ORT-format (.ort) file, without `session`'s
    ONNX pre-check: what a deployed runtime does, and what edge export times."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=session_options(threads),
                                providers=providers or ["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


def session(path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session; `threads` fixes intra-op threads (benchmarks must). Takes an
    ORT-format file (.ort, edge export's) too."""
    p = onnx_file(path)
    if p.suffix != ORT_SUFFIX:
        load_onnx(p)  # clear message for non-ONNX or truncated files before ORT's own
    try:
        return open_session(p, threads, providers)
    except Exception as exc:
        raise ModelpressError(f"ONNX Runtime cannot load {p}: {exc}") from None


def run_logits(sess, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    name = sess.get_inputs()[0].name
    out = []
    for i in range(0, len(x), batch_size):
        out.append(sess.run(None, {name: np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)})[0])
    return np.concatenate(out).astype(np.float32)
