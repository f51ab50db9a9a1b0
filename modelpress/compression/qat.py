"""Quantisation-aware training (QAT): fine-tune a torch model with fake int8 quantisation in the
loop, then export ONNX QDQ int8 that ONNX Runtime runs with int8 kernels (QLinearConv, QGemm, ...).

Static int8 after training (quantisation.py) rounds a finished model, and some (MobileNet-style
depthwise networks) lose accuracy that way; QAT lets the weights adapt to the rounding. The flow
is torchao's PT2E one (torch.ao.quantization is deprecated and its QAT models do not export):
torch.export (dynamic batch) -> X86InductorQuantizer with a QAT config -> prepare_qat_pt2e ->
fine-tune with the shared epoch loop -> convert_pt2e -> dynamo ONNX export.

Settings (the card records them under `quantisation`):
- per_channel: int8 symmetric weights with one scale per output channel, or one per tensor.
  Activations are uint8 affine per tensor, as static-int8 writes them (U8S8 QDQ).
- observer, how fake quantisation tracks the ranges it rounds to: "moving-average-minmax", an
  exponential moving average (0.01) of each batch's min/max (torchao's x86 QAT default,
  FusedMovingAvgObsFakeQuantize); "minmax", the running min/max of every batch seen (FakeQuantize
  + MinMaxObserver / PerChannelMinMaxObserver), which never shrinks, so outliers widen it.
- freeze_after: epochs after which the ranges (and, with batchnorm "train", the batch-norm
  statistics) are frozen for the rest of the fine-tuning, as torchao's QAT tutorial does.
- batchnorm: "fold" folds each batch norm's running statistics into its convolution before QAT
  (statistics frozen from the start); "train" keeps torchao's QAT conv-bn pattern (statistics
  update until freeze_after; convert_pt2e then traces ~100 patterns, 10-20 s on 2 cores).
The recipe departs from the x86 one where ONNX Runtime (1.31) would otherwise keep fp32 compute:
a Linear's bias is quantised to int32 (input scale x weight scale) so its Gemm becomes QGemm, and
residual adds take and give int8 (QLinearAdd), not a conv with an fp32 output fused into the add.
The input normalisation (and a regression target's de-standardisation) stays fp32.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import math
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from modelpress import models
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.core.hardware import cpu_flags, cpu_model, has_vnni
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.timing import timed
from modelpress.data.dataset import load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.evaluation import REGRESSION_SCORES, score_outputs
from modelpress.evaluation.torch_scoring import evaluate
from modelpress.export import onnx_export, runtime, verify
from modelpress.models import flops as flops_mod
from modelpress.training.loop import (TrainSettings, batch_step, make_optimiser, resolve_device, run_epochs,
                                      task_loss, validation_scores)

OBSERVERS = ("moving-average-minmax", "minmax")
BATCHNORM = ("fold", "train")
OPSET = 21  # as the PT2E note checked it; 18 (export's default) works as well with ONNX Runtime 1.31
PRECISION = "int8-qat"
# ONNX Runtime's int8 kernels, in the graph it optimises a QDQ model into
INT8_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger",
            "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
            "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax")
FLOAT_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")  # what is left in fp32 after it


def check_options(per_channel, observer: str, batchnorm: str, freeze_after, opset: int, tolerance: float) -> None:
    whole = isinstance(freeze_after, int) and not isinstance(freeze_after, bool)
    problems = [message for ok, message in [
        (isinstance(per_channel, bool), f"per_channel must be true or false, got {per_channel!r}"),
        (observer in OBSERVERS, f"observer must be one of {list(OBSERVERS)}, got {observer!r}"),
        (batchnorm in BATCHNORM, f"batchnorm must be one of {list(BATCHNORM)}, got {batchnorm!r}"),
        (freeze_after is None or (whole and freeze_after >= 1),
         f"freeze_after must be a whole number of epochs >= 1 (ranges need an epoch of observation) or None "
         f"(half the epochs), got {freeze_after!r}"),
        (isinstance(opset, int) and opset >= 13, f"opset must be >= 13 (per-channel QuantizeLinear), got {opset!r}"),
        (isinstance(tolerance, (int, float)) and 0 < tolerance < 1,
         f"tolerance must be in (0, 1) (a fraction of the outputs' spread), got {tolerance!r}")] if not ok]
    if problems:
        raise ModelpressError("invalid QAT settings: " + "; ".join(problems))


def quantization_config(per_channel: bool, observer: str, reduce_range: bool):
    """The X86InductorQuantizer QAT config: uint8 per-tensor activations, int8 symmetric weights."""
    from torchao.quantization import pt2e as ao
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    eps = 2 ** -12  # as torchao's default x86 config
    if observer == "moving-average-minmax":
        act = ao.FusedMovingAvgObsFakeQuantize.with_args(observer=ao.MovingAverageMinMaxObserver, eps=eps)
        weight = ao.FusedMovingAvgObsFakeQuantize.with_args(
            observer=ao.MovingAveragePerChannelMinMaxObserver if per_channel else ao.MovingAverageMinMaxObserver,
            eps=eps)
    else:
        act = ao.FakeQuantize.with_args(observer=ao.MinMaxObserver, eps=eps)
        weight = ao.FakeQuantize.with_args(
            observer=ao.PerChannelMinMaxObserver if per_channel else ao.MinMaxObserver, eps=eps)
    act_spec = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                                observer_or_fake_quant_ctr=act)
    # reduce_range as ONNX Runtime's quantiser means it: 7-bit weights (against U8S8 saturation on CPUs
    # without VNNI). torchao's x86 reduce_range narrows activations instead, which QuantizeLinear
    # cannot express (it always clamps to the full uint8 range), so the export would not match.
    weight_spec = QuantizationSpec(dtype=torch.int8, quant_min=-64 if reduce_range else -128,
                                   quant_max=63 if reduce_range else 127,
                                   qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
                                   ch_axis=0 if per_channel else None, observer_or_fake_quant_ctr=weight)
    return QuantizationConfig(act_spec, act_spec, weight_spec, None, is_qat=True)


def _bias_qparams(obs_or_fqs):
    act, weight = obs_or_fqs
    act_scale, _ = act.calculate_qparams()
    weight_scale, _ = weight.calculate_qparams()
    scale = (act_scale * weight_scale).to(torch.float32)
    return scale, torch.zeros_like(scale, dtype=torch.int32)


def make_quantizer(config, keep_fp32: set):
    """X86InductorQuantizer with `config` everywhere, `keep_fp32` nodes left alone, and each
    quantised Linear's bias int32 (scale = input scale x weight scale)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantizer import DerivedQuantizationSpec

    per_channel = config.weight.qscheme == torch.per_channel_symmetric

    class Quantizer(xiq.X86InductorQuantizer):
        def annotate(self, model):
            act = config.input_activation
            for node in model.graph.nodes:
                if node.name in keep_fp32:
                    xiq._annotate_nodes_not_quantize(node)
                elif node.target in _ADD and all(_is_activation(a) for a in node.args[:2]):
                    # int8 in, int8 out (QLinearAdd); the x86 recipe instead leaves a conv feeding an add
                    # unquantised (oneDNN fuses the sum), which ONNX Runtime runs as fp32 FusedConv
                    node.meta[xiq.QUANT_ANNOTATION_KEY] = xiq._X86InductorQuantizationAnnotation(
                        input_qspec_map={a: act for a in node.args[:2]}, output_qspec=act, _annotated=True,
                        _is_output_of_quantized_pattern=True)
            super().annotate(model)
            for node in model.graph.nodes:
                if node.target != torch.ops.aten.linear.default or len(node.args) < 3:
                    continue
                x, w, b = node.args[:3]
                annotation = node.meta.get(xiq.QUANT_ANNOTATION_KEY)
                qmap = getattr(annotation, "input_qspec_map", None) or {}
                if isinstance(b, torch.fx.Node) and x in qmap and w in qmap:
                    qmap[b] = DerivedQuantizationSpec(
                        derived_from=[(x, node), (w, node)], derive_qparams_fn=_bias_qparams, dtype=torch.int32,
                        quant_min=-(2 ** 31), quant_max=2 ** 31 - 1,
                        qscheme=torch.per_channel_symmetric if per_channel else torch.per_tensor_symmetric,
                        ch_axis=0 if per_channel else None)
            return model

    return Quantizer().set_global(config)


_ADD = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}


def _is_activation(arg) -> bool:
    """A float tensor computed by the graph (not a constant, parameter or number)."""
    val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
    return arg is not None and isinstance(val, torch.Tensor) and val.is_floating_point() and arg.op == "call_function"


def _normalisation_nodes(gm: torch.fx.GraphModule) -> set:
    """Nodes that compute with the input normalisation's (or target de-standardisation's) constants."""
    consts = {n for n in gm.graph.nodes if n.op == "get_attr" and n.target in runtime.NORMALISATION_CONSTANTS}
    return {n.name for n in gm.graph.nodes if n.op == "call_function" and set(n.all_input_nodes) & consts}


def capture(model: nn.Module, example: torch.Tensor, architecture: str) -> torch.fx.GraphModule:
    """torch.export with a dynamic batch dimension (a static capture fails at other batch sizes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model.train(), (example,),
                                       dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)).module()
    except Exception as exc:
        reason = " ".join(str(exc).strip().split("\n\n")[0].split())[:300]  # its first paragraph
        raise ModelpressError(
            f"torch.export cannot capture {architecture} for QAT ({type(exc).__name__}: {reason}). QAT "
            "needs a forward torch.export can trace with a dynamic batch dimension: no Python branching on "
            "tensor values, no .item()/.numpy()/.tolist(), no batch-size-specific reshapes. Fix the forward, "
            "or quantise its ONNX export after training instead (quantise, method static-int8).") from None


# dropout(input, p, train, ...); batch_norm(input, weight, bias, running_mean, running_var, training, ...)
_DROPOUT = {getattr(torch.ops.aten, n).default for n in ("dropout", "dropout_", "feature_dropout", "alpha_dropout",
                                                       "feature_alpha_dropout") if hasattr(torch.ops.aten, n)}
_BATCHNORM = {torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit.default}


def set_mode(gm: torch.fx.GraphModule, *, dropout: bool, batchnorm: bool) -> None:
    """Switch an exported graph's dropout and batch norm between training and inference by their
    `training` arguments. (torchao's move_exported_model_to_train/eval rewrite them by pattern, and
    in 0.18 that resets dropout p to 0.5 and batch-norm momentum/eps to 0.1/1e-5, besides tracing
    four patterns per call.)"""
    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _DROPOUT | _BATCHNORM:
            continue
        index, key, want = (2, "train", dropout) if node.target in _DROPOUT else (5, "training", batchnorm)
        if len(node.args) > index and node.args[index] is not want:
            node.args = (*node.args[:index], want, *node.args[index + 1:])
            changed = True
        elif key in node.kwargs and node.kwargs[key] is not want:
            node.kwargs = {**node.kwargs, key: want}
            changed = True
    if changed:
        gm.recompile()


class Trainable(nn.Module):
    """The prepared GraphModule behind the train()/eval() the shared loop calls (an exported graph
    has no modes of its own). Observers learn ranges in training only (fake quantisation ignores
    the mode: validation batches would move them); once frozen, the observers stay off and the
    batch-norm statistics stay fixed in training too, as torchao's QAT tutorial does."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__()
        self.gm = gm
        self.frozen = False

    def train(self, mode: bool = True):
        from torchao.quantization import pt2e as ao

        self.training = mode
        set_mode(self.gm, dropout=mode, batchnorm=mode and not self.frozen)
        self.gm.apply(ao.enable_observer if mode and not self.frozen else ao.disable_observer)
        return self

    def freeze(self) -> None:
        self.frozen = True
        self.train(self.training)

    def forward(self, x):
        return self.gm(x)


def fine_tune(net: Trainable, ds, settings: TrainSettings, freeze_after: int, log) -> dict:
    """The shared epoch loop (training.loop.run_epochs) over the fake-quantised model."""
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    net.to(device)
    n, batch = len(ds.train.x), settings.batch_size
    opt, sched = make_optimiser(net.parameters(), settings, settings.epochs * math.ceil(n / batch))
    step = batch_step(net, opt, sched, torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y), device,
                      loss_fn=task_loss(ds))

    def batches(epoch: int):
        if epoch > freeze_after and not net.frozen:
            net.freeze()
            log(f"[qat] epoch {epoch}: quantisation ranges (and batch-norm statistics) frozen from here on")
        return torch.randperm(n, generator=gen).split(batch)

    fitted, _ = run_epochs(net, settings, batches=batches, step=step, device=device, examples_per_epoch=n,
                           log=log, label="qat", validate=lambda: validation_scores(net, ds, device))
    net.to("cpu")
    return fitted


def graph_counts(path: Path, work: Path) -> dict:
    """Q/DQ nodes in the exported graph; int8 kernels and fp32 compute in ONNX Runtime's optimised one."""
    import onnx
    import onnxruntime as ort

    exported = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(work / "optimised.onnx")
    ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=runtime.DISABLED_OPTIMIZERS)
    optimised = Counter(n.op_type for n in onnx.load(str(work / "optimised.onnx")).graph.node)
    return {"quantize_linear": exported["QuantizeLinear"], "dequantize_linear": exported["DequantizeLinear"],
            "int8_ops": {op: optimised[op] for op in INT8_OPS if optimised[op]},
            "fp32_compute_ops": {op: optimised[op] for op in FLOAT_COMPUTE_OPS if optimised[op]}}


@timed
def qat(model_dir: str, dataset_dir: str, out_dir: str, *, settings: TrainSettings, per_channel: bool = True,
        observer: str = "moving-average-minmax", batchnorm: str = "fold", freeze_after: int | None = None,
        reduce_range: bool | None = None, opset: int = OPSET, tolerance: float = 0.05, verify_samples: int = 256,
        log: Callable[[str], None] = print) -> dict:
    """Fine-tune the torch model artifact `model_dir` with fake int8 quantisation and write the
    int8 QDQ ONNX model artifact to `out_dir` (model.onnx + meta.json), scored with ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    check_options(per_channel, observer, batchnorm, freeze_after, opset, tolerance)
    settings = settings.validate()
    if is_text_dataset(dataset_dir) or models.read_spec(model_dir).get("format") == "hf-text":
        raise ModelpressError("QAT covers image and table models; text models: use dynamic-int8 "
                              "(the quantise step's method dynamic-int8 on the ONNX export)")
    if settings.epochs < 1:
        raise ModelpressError(f"QAT fine-tunes: epochs must be >= 1, got {settings.epochs}")
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
        from torchao.quantization.pt2e.utils import _fuse_conv_bn_
    except ImportError as exc:
        raise ModelpressError(f"QAT needs torchao (pip install torchao==0.18.0): {exc}") from None
    model, spec = models.load_model(model_dir)
    ds = load_dataset(dataset_dir)
    shape = (spec.get("args") or {}).get("input_shape")
    if shape is not None and tuple(shape) != ds.feature_shape:
        raise ModelpressError(f"the model takes inputs of shape {list(shape)} but the dataset's are "
                              f"{list(ds.feature_shape)}; run QAT on the dataset the model was trained on")
    flags = cpu_flags()
    if reduce_range is None:
        reduce_range = not has_vnni(flags)
    if freeze_after is None:
        freeze_after = max(1, math.ceil(settings.epochs / 2))
    regression = ds.task == "regression"
    key = "rmse" if regression else "accuracy"
    t0 = time.perf_counter()
    before = evaluate(model, ds.test.x, ds.test.y, ds.num_outputs, task=ds.task)
    params, fwd = models.count_params(model), flops_mod.forward_flops(model, ds.feature_shape)
    example = torch.from_numpy(ds.train.x[:8])
    gm = capture(model, example if len(example) > 1 else torch.cat([example, example]), spec["architecture"])
    if batchnorm == "fold":
        _fuse_conv_bn_(gm)  # the running statistics into the convolutions: batch norm frozen from the start
    quiet = contextlib.redirect_stdout(io.StringIO())
    with warnings.catch_warnings(), quiet:
        warnings.simplefilter("ignore")
        config = quantization_config(per_channel, observer, reduce_range)
        prepared = prepare_qat_pt2e(gm, make_quantizer(config, _normalisation_nodes(gm)))
    net = Trainable(prepared)
    log(f"[qat] {spec['architecture']} ({params:,} params), fp32 test {key} {before[key]:.4g}; "
        f"{'per-channel' if per_channel else 'per-tensor'} weights, observer {observer}, batch norm {batchnorm}, "
        f"ranges frozen after epoch {freeze_after}, reduce_range {reduce_range}")
    fitted = fine_tune(net, ds, settings, freeze_after, log)
    net.eval()
    with warnings.catch_warnings(), quiet:
        warnings.simplefilter("ignore")
        converted = Trainable(convert_pt2e(prepared))  # export_model calls .eval() and exports its result
    settings_out = {"method": "qat", "per_channel": per_channel, "observer": observer, "batchnorm": batchnorm,
                    "freeze_after": freeze_after, "reduce_range": reduce_range, "format": "QDQ",
                    "activation_type": "uint8", "weight_type": "int8", "epochs": settings.epochs,
                    "epochs_run": fitted["epochs_run"], "learning_rate": settings.learning_rate,
                    "batch_size": settings.batch_size, "optimizer": settings.optimizer, "seed": settings.seed}
    with atomic_dir(local_path(out_dir)) as tmp, tempfile.TemporaryDirectory() as work:
        path = tmp / runtime.ONNX_FILE
        onnx_export.export_model(converted, example[:2], str(path), opset)
        exported = onnx.load(str(path))
        for node in exported.graph.node:  # the exporter's per-node stack traces: most of a small model's bytes
            del node.metadata_props[:]
        onnx.save(exported, str(path))
        runtime.check_onnx(path)
        sess = runtime.session(path)
        # torch and ONNX Runtime both compute in int8 but round differently in places, so outputs differ
        # by a few quantisation steps: the bound is `tolerance` x the outputs' spread (at least 1)
        xv = ds.test.x[:max(2, verify_samples)]
        with torch.no_grad():
            ref = converted(torch.from_numpy(xv))
        bound = tolerance * max(1.0, float(ref.max() - ref.min()))
        checked = verify.against_torch(converted, sess, xv, rtol=0.0, atol=bound)
        counts = graph_counts(path, Path(work))
        if not counts["quantize_linear"] or not counts["int8_ops"]:
            raise ModelpressError(f"the QAT export has {counts['quantize_linear']} QuantizeLinear nodes and ONNX "
                                  f"Runtime found no int8 kernel in it ({counts}): nothing this quantiser covers "
                                  "(Conv, Linear) was quantised; use static-int8 on the ONNX export instead")
        test = score_outputs(runtime.run_logits(sess, ds.test.x), ds.test.y, ds.task, ds.num_outputs)
        scores = {k: test[k] for k in REGRESSION_SCORES} if regression else {"accuracy": test["accuracy"]}
        size = path.stat().st_size
        card = ModelCard(
            framework="onnx", accuracy=None if regression else test["accuracy"], class_names=ds.class_names,
            task=ds.task, scores=scores if regression else {}, architecture=spec["architecture"], params=params,
            flops=fwd, precision=PRECISION, input_shape=[-1, *ds.feature_shape],
            extra={"format": "onnx", "opset": opset, "input_name": onnx_export.INPUT_NAME,
                   "output_name": onnx_export.OUTPUT_NAME, "input": onnx_export.input_description(ds.schema, spec),
                   "quantisation": settings_out, "size_bytes": size, **checked,
                   "int8_ops": counts["int8_ops"], "fp32_compute_ops": counts["fp32_compute_ops"],
                   f"fp32_{key}": before[key], "source_model": str(local_path(model_dir)),
                   "accuracy_note": "scored with ONNX Runtime CPUExecutionProvider", "cpu_model": cpu_model(),
                   "cpu_flags": [f for f in flags if f.startswith(("avx", "amx", "sse4", "fma", "f16c"))],
                   "onnxruntime": ort.__version__},
            detail={"source_spec": spec, "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                                                      "onnxruntime": ort.__version__,
                                                      "torchao": importlib.metadata.version("torchao")}})
        write_json_atomic(tmp / runtime.META_FILE, card.file_metadata())
    seconds = time.perf_counter() - t0
    int8 = sum(counts["int8_ops"].values())
    log(f"[qat] test {key} {before[key]:.4g} (fp32 torch) -> {scores[key]:.4g} (int8 ONNX Runtime); "
        f"{size / 1e6:.2f} MB; ONNX Runtime int8 kernels {counts['int8_ops']}, fp32 left "
        f"{counts['fp32_compute_ops'] or 'none'}; max abs diff vs torch {checked['max_abs_diff']:.2e}; {seconds:.1f}s")
    metrics = {**{f"test_{k}": v for k, v in scores.items()}, f"fp32_{key}": before[key],
               f"{key}_delta": scores[key] - before[key], "size_bytes": size, "int8_nodes": int8,
               **{f"int8_{op}": n for op, n in counts["int8_ops"].items()},
               "fp32_compute_nodes": sum(counts["fp32_compute_ops"].values()),
               "quantize_linear_nodes": counts["quantize_linear"],
               "dequantize_linear_nodes": counts["dequantize_linear"],
               "max_abs_diff": checked["max_abs_diff"], "epochs_run": fitted["epochs_run"], "wall_seconds": seconds}
    return StepResult(card, metrics, confusion_matrix=None if regression else test["confusion_matrix"],
                      extra={"history": fitted["history"]}).as_dict()
