"""ONNX Runtime's ORT format for the edge: the conversion, its required-operators configuration,
and the checks that the converted model answers as the ONNX one does.

The conversion is onnxruntime's own tool (`onnxruntime.tools.convert_onnx_models_to_ort`,
shipped in the wheel): it optimises the graph once, at conversion, and saves it as a
flatbuffer that a reduced ("minimal") ONNX Runtime build loads without an ONNX parser or
optimiser; the configuration lists the kernels that build needs (its
``--include_ops_by_config`` input). The measuring and the step itself are
`modelpress.selection.edge_benchmark` (measurement sits above this layer).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.export import runtime

ORT_FILE = "model.ort"
CONFIG_FILE = "required_operators.config"
TYPES_CONFIG_FILE = "required_operators_and_types.config"  # with type reduction
TARGET_PLATFORMS = ("", "arm", "amd64")  # "": portable; arm: int8 QDQ kept as int8; amd64: + NCHWc layouts


def convert(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *, target_platform: str = "",
            type_reduction: bool = False) -> dict:
    """Convert `onnx_path` (a model.onnx or the folder holding it) into `out_dir`: ``model.ort`` and
    the required-operators config. Returns their paths and the operators the config names."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    if target_platform not in TARGET_PLATFORMS:
        raise ModelpressError(f"target_platform must be one of {list(TARGET_PLATFORMS)} ('' for any CPU), "
                              f"got {target_platform!r}")
    source = runtime.onnx_file(onnx_path)
    runtime.load_onnx(source)  # one clear error for a missing, truncated or non-ONNX file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as work:
        # the tool names its outputs after the input file and converts every .onnx it is given
        model = Path(work) / runtime.ONNX_FILE
        shutil.copyfile(source, model)
        chatter, tool_log = io.StringIO(), logging.getLogger("ort_format_model.utils")
        level = tool_log.level
        tool_log.setLevel(logging.WARNING)  # it logs "Created config" at INFO and prints each stage
        try:
            with contextlib.redirect_stdout(chatter):
                convert_onnx_models_to_ort(model, output_dir=Path(work), optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=target_platform or None,
                                           enable_type_reduction=type_reduction)
        except Exception as exc:
            raise ModelpressError(f"ONNX Runtime cannot convert {source} to ORT format ({type(exc).__name__}: "
                                  f"{str(exc)[:300]}); check that ONNX Runtime runs the model on the CPU") from None
        finally:
            tool_log.setLevel(level)
        produced = sorted(Path(work).glob("model.required_operators*.config"))
        if not (Path(work) / ORT_FILE).is_file() or len(produced) != 1:
            raise ModelpressError(f"the ORT conversion of {source} wrote no model.ort and config; its output: "
                                  f"{chatter.getvalue()[-300:]}")
        ort_path = out / ORT_FILE
        config = out / (TYPES_CONFIG_FILE if type_reduction else CONFIG_FILE)
        shutil.move(Path(work) / ORT_FILE, ort_path)
        # the tool's header names the model by its temporary path: name the file beside it instead
        config.write_text(produced[0].read_text().replace(f"{work}{os.sep}", ""))
    return {"ort_path": ort_path, "config_path": config,
            "operators": required_operators(config, type_reduction=type_reduction)}


def required_operators(config_path: str | os.PathLike, *, type_reduction: bool = False) -> dict[str, list[str]]:
    """{domain: sorted operator names} from a required-operators config, read by onnxruntime's own parser."""
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    required, _ = parse_config(str(config_path), enable_type_reduction=type_reduction)
    return {domain: sorted({op for ops in by_opset.values() for op in ops}) for domain, by_opset in
            sorted(required.items())}


def load_seconds(paths: dict[str, Path], *, repeats: int = 5, threads: int | None = None) -> dict[str, float]:
    """Median seconds to create a session from each file, loads interleaved (a b a b ...) so that drift
    hits them alike; one untimed load each first (imports, page cache)."""
    if repeats < 1:
        raise ModelpressError(f"load_repeats must be >= 1, got {repeats}")
    times: dict[str, list[float]] = {k: [] for k in paths}
    for path in paths.values():
        runtime.open_session(path, threads)
    for _ in range(repeats):
        for name, path in paths.items():
            t0 = time.perf_counter()
            runtime.open_session(path, threads)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compare(reference: np.ndarray, converted: np.ndarray, *, task: str, atol: float, rtol: float,
            precision: str = "fp32") -> dict:
    """The ORT model's outputs against the ONNX model's on the same rows; raise beyond
    ``atol + rtol * |onnx|`` or, for classification, on any row whose predicted class differs.

    Both outputs are float32 (an int8 model's are its dequantised logits), so one rule serves every
    precision; the argmax check is what a client of a quantised model sees."""
    if converted.shape != reference.shape:
        raise ModelpressError(f"the ORT model's outputs have shape {list(converted.shape)}, the ONNX model's "
                              f"{list(reference.shape)}: the conversion changed the graph; report it with the model")
    diff = np.abs(converted.astype(np.float64) - reference)
    out = {"rows": int(len(reference)), "max_abs_diff": float(diff.max(initial=0.0)), "atol": atol, "rtol": rtol,
           "precision": precision,
           "compared": "float32 outputs" + (" (dequantised logits)" if precision.startswith("int8") else "")}
    if task == "classification":
        out["argmax_agreement"] = float(np.mean(converted.argmax(1) == reference.argmax(1))) if len(reference) else 1.0
    beyond = int((diff > atol + rtol * np.abs(reference)).sum())
    if beyond or out.get("argmax_agreement", 1.0) < 1.0:
        raise ModelpressError(
            f"the ORT model's outputs differ from the ONNX model's on the test split: max abs diff "
            f"{out['max_abs_diff']:.3g} (tolerance {atol:g} + {rtol:g} * |onnx|, {beyond} value(s) beyond), "
            f"class agreement {out.get('argmax_agreement', 1.0):.4f}; convert with target_platform '' "
            "(portable optimisations), or loosen atol/rtol if the difference is acceptable")
    return out
