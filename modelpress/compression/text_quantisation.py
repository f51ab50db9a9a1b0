"""ONNX Runtime post-training quantisation of an exported text classifier (``export_text_onnx``,
fused or not).

Methods, and which ops each touches:
- dynamic-int8: ``quantize_dynamic``; MatMul (and a fused graph's Attention) weights int8 ahead of
  time, per channel, activations quantised at run time (DynamicQuantizeLinear + MatMulInteger).
  This is where transformers gain most on CPUs: nearly all their FLOPs are MatMuls.
- static-int8: ``quantize_static`` in QDQ format, activation ranges calibrated on token batches.
  Only MatMul and Gemm with a constant weight get QuantizeLinear/DequantizeLinear pairs.
- fp16: float16 weights and compute with float32 inputs/outputs kept; a GPU variant.
- fused: no quantisation: fp32 with ONNX Runtime's transformer fusions (``optimise_transformer``:
  Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu), a variant of its own.

Kept in fp32 on purpose, in both int8 methods:
- Gather (the embedding lookups): a lookup does no arithmetic, so int8 tables buy size but no
  time, and one per-tensor scale over a whole vocabulary blurs the rare rows;
  ``quantise_embeddings=True`` quantises them anyway (dynamic-int8) when size is what counts.
- LayerNormalization, Softmax, Erf/GELU, the residual Adds: their inputs span wide ranges
  (pre-LayerNorm sums, attention scores) that a uint8 grid resolves badly, and they are cheap.
- the activation x activation MatMuls (Q.K^T, probabilities.V): their ranges change with each
  sequence, and uint8 softmax outputs lose the small probabilities (dynamic: ``MatMulConstBOnly``;
  static: those nodes are excluded by name, since the QDQ quantiser ignores that option).
- static-int8 quantises the MatMul/Gemm inputs, not their outputs: an output rounded to uint8
  before the bias Add and the residual sum adds error for no speed, as ONNX Runtime runs
  DequantizeLinear -> MatMul without an output Q as an integer MatMul with a float output.
On a fused graph (``optimise_transformer``) dynamic-int8 turns Attention into QAttention; static-int8
leaves it (its Q/K/V projection included) in fp32, as the QDQ quantiser has no rule for it.
Each output is loaded and run in ONNX Runtime on a token batch before it is written, and
compared with the fp32 graph it came from.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.core.hardware import cpu_flags, cpu_model, has_vnni
from modelpress.data.token_batches import token_arrays, trim_batch
from modelpress.export import runtime
from modelpress.export.text_export import optimise_transformer
from modelpress.export.text_runtime import OUTPUT_NAME, graph_inputs, synthetic_batch

METHODS = ("fused", "dynamic-int8", "static-int8", "fp16")
PRECISIONS = {"fused": "fp32", "static-int8": "int8", "dynamic-int8": "int8-dynamic", "fp16": "fp16"}
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
# Gemm: quantize_dynamic rewrites it as MatMul + Add first; Attention: a fused graph's (optimise_transformer)
DYNAMIC_OPS = ["MatMul", "Gemm", "Attention"]
STATIC_OPS = ["MatMul", "Gemm"]
KEPT_FP32 = ["Gather", "LayerNormalization", "Softmax", "Erf", "Add", "activation x activation MatMul"]
QUANT_NODES = ("MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear",
               "DynamicQuantizeMatMul", "QAttention", "QLinearMatMul")
CHECK_ROWS = 8


def _reader(arrays: dict[str, np.ndarray], rows: np.ndarray, names: list[str]):
    """One row per calibration batch, trimmed to its own length: no padding at all reaches the
    activation ranges, and the calibrator accepts batches of different lengths."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            row = next(self._it, None)
            return None if row is None else trim_batch(arrays, [row], names)

        def rewind(self):
            self._it = iter(rows.tolist())

    return Reader()


# ------------------------------------------------------------------------ quantising

def _session(path, providers=None, threads: int | None = None):
    return runtime.session(path, threads=threads, providers=providers)


def _check(source: Path, out: Path, feed: dict[str, np.ndarray]) -> dict:
    """Run the new graph on a token batch; it must give finite logits of the fp32 graph's shape."""
    ref = _session(source).run([OUTPUT_NAME], feed)[0]
    try:
        got = _session(out).run([OUTPUT_NAME], feed)[0]
    except ModelpressError:
        raise
    except Exception as exc:  # noqa: BLE001 -- ONNX Runtime raises its own exception types
        raise ModelpressError(f"the quantised graph loads but fails on a token batch of shape "
                              f"{list(feed['input_ids'].shape)}: {str(exc)[:300]}") from None
    if got.shape != ref.shape or got.dtype != np.float32 or not np.isfinite(got).all():
        raise ModelpressError(f"the quantised graph gives {got.dtype} logits of shape {list(got.shape)} "
                              f"({'finite' if np.isfinite(got).all() else 'with NaN/inf'}); the fp32 graph "
                              f"gives float32 {list(ref.shape)}. Try per_channel=True, or another method")
    return {"check_shape": list(feed["input_ids"].shape), "check_max_abs_diff": float(np.abs(got - ref).max()),
            "check_argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}


def _op_counts(path) -> dict[str, int]:
    import onnx

    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)
                       .items()))


def _pre_process(source: Path, pre: Path) -> str:
    """Shape inference and constant folding first: the exporter's value_info can disagree with what
    the quantiser infers, and folded shapes leave fewer nodes to skip. Symbolic inference needs
    auto_merge on BERT graphs (the mask's broadcast dims are symbols it cannot prove equal); where
    it still fails, ONNX's own shape inference is enough for MatMul weights. Returns which ran."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    failure = None
    source, pre = source.resolve(), pre.resolve()
    for shapes, options in (("symbolic (auto_merge)", {"skip_symbolic_shape": False, "auto_merge": True}),
                            ("onnx", {"skip_symbolic_shape": True})):
        try:
            # in the work folder: a failed symbolic inference dumps sym_shape_infer_temp.onnx (+ data) in the cwd
            with contextlib.chdir(pre.parent), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quant_pre_process(str(source), str(pre), **options)
            return shapes
        except Exception as exc:  # noqa: BLE001 -- shape inference raises whatever its handlers raise
            failure = f"{type(exc).__name__}: {str(exc)[:300]}"
    raise ModelpressError(f"ONNX Runtime's quantisation pre-processing (shape inference) failed on {source}: "
                          f"{failure}; re-export the model with export_text_onnx")


def _dynamic(pre: Path, out: Path, *, per_channel: bool, reduce_range: bool, embeddings: bool) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = DYNAMIC_OPS + (["Gather"] if embeddings else [])
    quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                     reduce_range=reduce_range, op_types_to_quantize=ops,
                     extra_options={"MatMulConstBOnly": True})
    return {"format": "IntegerOps", "op_types_quantised": ops, "per_channel": per_channel,
            "reduce_range": reduce_range, "weight_type": "int8", "activation_type": "uint8 (at run time)"}


def _activation_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls whose both inputs are activations (no weight initializer or constant)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not set(n.input) & consts]


def _static(pre: Path, out: Path, work: Path, arrays, *, names, samples: int, calibration_method: str,
            per_channel: bool, reduce_range: bool, seed: int) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    n = len(arrays["input_ids"])
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(samples, n), replace=False))
    excluded = _activation_matmuls(pre)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(pre), str(out), _reader(arrays, rows, names), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=STATIC_OPS, nodes_to_exclude=excluded, per_channel=per_channel,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, calibration_method),
                        calibration_cache_path=str(work / "calibration"),
                        extra_options={"OpTypesToExcludeOutputQuantization": STATIC_OPS})
    return {"format": "QDQ", "op_types_quantised": STATIC_OPS, "outputs_quantised": False,
            "nodes_excluded": excluded, "per_channel": per_channel,
            "reduce_range": reduce_range, "weight_type": "int8", "activation_type": "uint8",
            "calibration_samples": int(len(rows)), "calibration_method": calibration_method,
            "calibration_batches": "one row each, unpadded"}


def _fp16(source: Path, out: Path) -> dict:
    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # it warns of every fp32 constant clipped to the fp16 range, e.g. the attention mask's
        # -3.4e38, which still masks at -1e4 (softmax gives exp(-1e4) = 0 either way)
        warnings.simplefilter("ignore")
        model16 = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model16, str(out))
    return {"keep_io_types": True, "io_type": "float32",
            "note": "a GPU variant: on a CPU it runs (checked) but fp16 buys no CPU time; measure it on the GPU"}


def quantise_text(onnx_path: str, out_path: str, method: str, *, calibration=None, calibration_samples: int = 128,
                  per_channel: bool = True, reduce_range: bool | None = None, calibration_method: str = "MinMax",
                  quantise_embeddings: bool = False, seed: int = 0, num_heads: int = 0, hidden_size: int = 0) -> dict:
    """Quantise the text classifier at ``onnx_path`` (a .onnx file, or a folder holding model.onnx).

    ``out_path`` ending in ``.onnx`` is written as that one file; otherwise it is a folder (written
    whole or not at all) holding model.onnx, meta.json (the source's meta.json, if any, plus the
    settings) and the source folder's tokenizer/. ``calibration``: a text split or its token arrays
    (``split.inputs()``), required for static-int8 and used for the check batch where given.
    ``reduce_range`` None decides from the CPU: on x86 without VNNI the U8S8 int8 path can
    saturate, so it is on unless the CPU has VNNI/AMX.
    Returns the method, the settings, the sizes, op counts and the check's figures.
    """
    if method not in METHODS:
        raise ModelpressError(f"unknown text quantisation method {method!r}; choose one of {list(METHODS)}")
    if calibration_method not in CALIBRATION_METHODS:
        raise ModelpressError(f"unknown calibration method {calibration_method!r}; choose one of "
                              f"{list(CALIBRATION_METHODS)}")
    source = runtime.onnx_file(onnx_path)
    runtime.load_onnx(source)  # a clear error for a file that is not ONNX, before the quantiser's own
    names = graph_inputs(source)
    arrays = token_arrays(calibration, "calibration") if calibration is not None else None
    if method == "static-int8" and (arrays is None or calibration_samples < 1):
        raise ModelpressError("static-int8 needs calibration token batches: pass calibration=<the training "
                              f"split> (or split.inputs()) and calibration_samples >= 1 (got "
                              f"{calibration_samples}; 100-500 is typical), or use method='dynamic-int8', "
                              "which needs none")
    if quantise_embeddings and method != "dynamic-int8":
        raise ModelpressError(f"quantise_embeddings applies to dynamic-int8 only (int8 Gather tables); {method} "
                              "keeps the embeddings as they are: drop quantise_embeddings or use dynamic-int8")
    if reduce_range is None:
        reduce_range = not has_vnni()
    feed = (trim_batch(arrays, np.arange(min(CHECK_ROWS, len(arrays["input_ids"]))), names) if arrays is not None
            else synthetic_batch(source, names))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        out = work / runtime.ONNX_FILE
        try:
            if method == "fp16":
                settings = _fp16(source, out)
            elif method == "fused":
                stats = optimise_transformer(str(source), str(out), num_heads=num_heads, hidden_size=hidden_size)
                settings = {"optimizer": "onnxruntime.transformers.optimizer (model_type bert, opt_level 0)",
                            "fused_operators": {k: v for k, v in stats.items() if v}}
            else:
                pre = work / "pre.onnx"
                shapes = _pre_process(source, pre)
                if method == "dynamic-int8":
                    settings = _dynamic(pre, out, per_channel=per_channel, reduce_range=reduce_range,
                                        embeddings=quantise_embeddings)
                else:
                    settings = _static(pre, out, work, arrays, names=names, samples=calibration_samples,
                                       calibration_method=calibration_method, per_channel=per_channel,
                                       reduce_range=reduce_range, seed=seed)
                settings["shape_inference"] = shapes
        except ModelpressError:
            raise
        except Exception as exc:  # noqa: BLE001 -- the quantisers raise whatever their op handlers raise
            raise ModelpressError(f"{method} of {source} failed in the quantiser: {type(exc).__name__}: "
                                  f"{str(exc)[:300]}; try per_channel=False, or another method") from None
        if method not in ("fp16", "fused"):
            settings["kept_fp32"] = [k for k in KEPT_FP32 if not (quantise_embeddings and k == "Gather"
                                                                 and method == "dynamic-int8")]
        checked = _check(source, out, feed)
        counts = _op_counts(out)
        size, source_size = out.stat().st_size, source.stat().st_size
        result = {"method": method, "precision": PRECISIONS[method], "settings": {"method": method, **settings},
                  "inputs": names, "size_bytes": size, "source_size_bytes": source_size,
                  "size_ratio": size / source_size, "quantisation_nodes": {k: counts[k] for k in QUANT_NODES
                                                                           if k in counts},
                  "op_counts": counts, **checked, "cpu_model": cpu_model(),
                  "cpu_flags": [f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c"))]}
        result["wall_seconds"] = time.perf_counter() - t0
        _write(out, source, local_path(out_path), result)
    return result


def _write(out: Path, source: Path, final: Path, result: dict) -> None:
    if final.suffix == ".onnx":
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".onnx", dir=final.parent)
        os.close(fd)
        try:
            shutil.copyfile(out, tmp)
            os.replace(tmp, final)  # whole or not at all, as export_text_onnx writes
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    import onnxruntime as ort

    meta = {**runtime.read_meta(source), "framework": "onnx", "precision": result["precision"],
            "quantisation": result["settings"], "size_bytes": result["size_bytes"],
            "source_size_bytes": result["source_size_bytes"], "onnxruntime": ort.__version__}
    for stale in ("max_abs_diff", "max_rel_diff"):  # the export's figures describe the fp32 graph
        meta.pop(stale, None)
    with atomic_dir(final) as tmp:
        shutil.copyfile(out, tmp / runtime.ONNX_FILE)
        write_json_atomic(tmp / runtime.META_FILE, meta)
        tokenizer = source.parent / "tokenizer"
        if tokenizer.is_dir():  # a text model is served with its own tokenizer
            shutil.copytree(tokenizer, tmp / "tokenizer")


# ------------------------------------------------------------------------ scoring
