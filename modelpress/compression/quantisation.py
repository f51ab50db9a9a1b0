"""ONNX Runtime post-training quantisation of an ONNX model artifact.

- static-int8: QDQ format, calibrated on training-split samples, per-channel weights,
  after quant_pre_process (shape inference, graph optimisation). On x86 without VNNI the
  U8S8 path can saturate, so reduce_range is on unless the CPU has VNNI/AMX.
- dynamic-int8: weights quantised ahead of time, activations at run time (suits
  MatMul-heavy models; a slowdown for convolutions, and measured as such).
- fp16: float16 weights and compute with float32 inputs/outputs kept; meant for GPUs
  (the CPU execution provider has few fp16 kernels).
Scored by the dataset's task: accuracy, or RMSE/MAE/R² in the target's units (a regression
model's target de-standardisation stays fp32 with the input normalisation).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from modelpress.export import runtime
from modelpress.data.dataset import load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.core.errors import ModelpressError
from modelpress.core.timing import timed
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.hardware import cpu_flags, cpu_model, has_vnni
from modelpress.evaluation import REGRESSION_SCORES, score_outputs

METHODS = ("static-int8", "dynamic-int8", "fp16")
PRECISIONS = {"static-int8": "int8", "dynamic-int8": "int8-dynamic", "fp16": "fp16"}  # the card's `precision`
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


def _reader(x: np.ndarray, input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(x)

        def get_next(self):
            row = next(self._it, None)
            return None if row is None else {input_name: row[None].astype(np.float32)}

        def rewind(self):
            self._it = iter(x)

    return Reader()


@timed
def quantise(onnx_dir: str, dataset_dir: str, out_dir: str, *, method: str = "static-int8",
             calibration_samples: int = 256, calibration_method: str = "MinMax",
             per_channel: bool = True, reduce_range: bool | None = None, seed: int = 0,
             log: Callable[[str], None] = print) -> dict:
    """Quantise `onnx_dir` into `out_dir` (model.onnx + meta.json); score it where it runs."""
    import onnx
    import onnxruntime as ort

    if is_text_dataset(dataset_dir):
        from modelpress.compression.text_steps import quantise_text_step

        return quantise_text_step(onnx_dir, dataset_dir, out_dir, method=method, calibration_samples=calibration_samples,
                                  calibration_method=calibration_method, per_channel=per_channel,
                                  reduce_range=reduce_range, seed=seed, log=log)
    if method not in METHODS:
        raise ModelpressError(f"unknown quantisation method {method!r}; choose one of {list(METHODS)}")
    if calibration_method not in CALIBRATION_METHODS:
        raise ModelpressError(f"unknown calibration method {calibration_method!r}; choose one of "
                              f"{list(CALIBRATION_METHODS)}")
    source = runtime.onnx_file(onnx_dir)
    runtime.load_onnx(source)  # clear error for non-ONNX or truncated input
    meta_in = runtime.read_meta(onnx_dir)
    ds = load_dataset(dataset_dir)
    flags = cpu_flags()
    if reduce_range is None:
        reduce_range = not has_vnni(flags)
    settings = {"method": method}
    t0 = time.perf_counter()
    with atomic_dir(local_path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        out = tmp / runtime.ONNX_FILE
        if method in ("static-int8", "dynamic-int8"):
            from onnxruntime.quantization.shape_inference import quant_pre_process

            # Re-infers shapes and folds constants; the exporter's value_info can otherwise
            # disagree with ONNX shape inference inside the quantiser.
            pre = Path(work) / "pre.onnx"
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=False)
        if method == "static-int8":
            if calibration_samples < 1 or len(ds.train.x) == 0:
                raise ModelpressError(f"static int8 needs calibration samples: calibration_samples is "
                                      f"{calibration_samples} and the training split has {len(ds.train.x)} "
                                      "rows; use at least 1 (100-500 is typical)")
            from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                                  quantize_static)

            rng = np.random.default_rng(seed)
            take = rng.choice(len(ds.train.x), size=min(calibration_samples, len(ds.train.x)), replace=False)
            graph = onnx.load(str(pre), load_external_data=False).graph
            input_name = graph.input[0].name
            # The input normalisation stays fp32: int8 mean/std would shift every feature, and
            # the first weight layer quantises its (normalised) input anyway.
            norm_nodes = [n.name for n in graph.node if set(n.input) & set(runtime.NORMALISATION_CONSTANTS)]
            quantize_static(str(pre), str(out), _reader(ds.train.x[np.sort(take)], input_name),
                            nodes_to_exclude=norm_nodes,
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, calibration_method),
                            calibration_cache_path=str(Path(work) / "calibration"))
            settings.update(calibration_samples=int(len(take)), calibration_method=calibration_method,
                            per_channel=per_channel, reduce_range=reduce_range, format="QDQ",
                            activation_type="uint8", weight_type="int8")
        elif method == "dynamic-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8,
                             per_channel=per_channel, reduce_range=reduce_range)
            settings.update(per_channel=per_channel, reduce_range=reduce_range, weight_type="int8")
        else:
            from onnxconverter_common import float16

            model16 = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
            onnx.save(model16, str(out))
            settings.update(keep_io_types=True)
        for leftover in tmp.glob("*.data"):
            leftover.unlink()
        regression = ds.task == "regression"
        try:
            outputs = runtime.run_logits(runtime.session(out), ds.test.x)
            test = score_outputs(outputs, ds.test.y, ds.task, ds.num_outputs)
            scores = {k: test[k] for k in REGRESSION_SCORES} if regression else {"accuracy": test["accuracy"]}
            note = "scored with ONNX Runtime CPUExecutionProvider"
        except ModelpressError as exc:
            scores = {}
            note = f"not scored: this ONNX Runtime cannot run it on the CPU ({str(exc)[:200]})"
        accuracy = scores.get("accuracy")
        size, source_size = out.stat().st_size, source.stat().st_size
        # the fp32 card carries over (architecture, classes, input, lineage); the export's
        # verification figures describe the fp32 graph, not this one
        card = ModelCard.from_metadata(meta_in).evolve(
            drop=("size_bytes", "max_abs_diff", "max_rel_diff"), framework="onnx", precision=PRECISIONS[method],
            accuracy=accuracy, task=ds.task, scores=scores if regression else {},
            extra={"format": "onnx", "quantisation": settings, "size_bytes": size, "source_size_bytes": source_size,
                   "accuracy_note": note, "cpu_model": cpu_model(),
                   "cpu_flags": [f for f in flags if f.startswith(("avx", "amx", "sse4", "fma", "f16c"))],
                   "onnxruntime": ort.__version__})
        write_json_atomic(tmp / runtime.META_FILE, card.file_metadata())
    seconds = time.perf_counter() - t0
    key = "rmse" if regression else "accuracy"
    shown = f"{scores[key]:.4g}" if scores else "n/a (" + note + ")"
    log(f"[quantise] {method}: {source_size / 1e6:.2f} MB -> {size / 1e6:.2f} MB, "
        f"test {'RMSE' if regression else 'accuracy'} {shown}, settings {settings}, {seconds:.1f}s")
    metrics = {"size_bytes": size, "size_ratio": size / source_size, "wall_seconds": seconds,
               **{f"test_{k}": v for k, v in scores.items()}}
    if scores and meta_in.get(key) is not None:  # the change from the fp32 model this came from
        metrics[f"{key}_delta"] = scores[key] - meta_in[key]
    return StepResult(card, metrics).as_dict()


def parse_reduce_range(value: str | bool | None) -> bool | None:
    """"auto" -> None (decide from the CPU flags); "true"/"false" -> bool."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", ""):
        return None
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ModelpressError(f"reduce_range must be 'auto', 'true' or 'false', got {value!r}")
