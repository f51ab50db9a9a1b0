"""The torch model artifact: ``weights.safetensors`` + ``spec.json``.

A spec is a plain dict: ``{"architecture": source, "args": {...}}``, where ``args`` always
holds ``input_shape`` and ``num_classes`` (the number of outputs), and ``source`` is a
built-in name, ``torchvision:<name>``, ``timm:<name>`` or ``package.module:callable`` (then
``spec["code_dir"]`` is the folder its code is imported from; see sources.py). Structured
pruning changes layer widths; the new shapes go into ``spec["layer_shapes"]`` so the model
is rebuilt without pickles.
``spec["normalisation"]`` (the dataset's training-split mean/std) wraps the architecture in
``InputNormalised``: the model takes raw features, so its ONNX export, its quantised,
pruned and distilled variants and the served model all do too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.models import sources
from modelpress.models.architectures import InputNormalised, InvertedResidual, architectures, factory

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"


# ---------------------------------------------------------------------- checking args

_ARGUMENTS_THAT_RUN: set[str] = set()  # sources + args already built (and run) by check_arguments
STAND_IN_IMAGE = [3, 64, 64]  # torchvision/timm are built for this when the dataset's shape is not known


def check_arguments(architecture: str, args: dict, arch_key: str = "architecture", args_key: str = "model_args",
                    code_dir: str = "", input_shape=None) -> None:
    """Refuse an unknown model source, or arguments it does not take, before anything runs.

    Built-ins are built and run on a 1x32x32 stand-in. torchvision/timm models are built
    (name and arguments checked; run too when ``input_shape`` is given). A user callable is
    imported and its keyword arguments checked; it is built when its input shape is known or
    it does not ask for one, and must return an nn.Module.
    """
    if not isinstance(architecture, str) or not architecture:
        raise ModelpressError(f"{arch_key} must name a model: one of {architectures()}, torchvision:<name>, "
                              "timm:<name> or package.module:callable")
    if not isinstance(args, dict):
        raise ModelpressError(f"{args_key} must be a mapping of arguments, e.g. {{channels: [16, 32]}}")
    kind = sources.source_kind(architecture)
    key = json.dumps([architecture, args, code_dir, input_shape], sort_keys=True, default=str)
    if key in _ARGUMENTS_THAT_RUN:  # a config load checks every pipeline: build each model once
        return
    if kind == sources.BUILTIN:
        _check_builtin(architecture, args, arch_key, args_key)
    elif kind == sources.MODULE:
        _check_callable(architecture, args, arch_key, args_key, code_dir, input_shape)
    else:
        shape = list(input_shape) if input_shape else STAND_IN_IMAGE
        model = sources.build_net(architecture, shape, 2, _ints(args), key=arch_key, args_key=args_key).eval()
        if input_shape:
            try:
                with torch.no_grad():
                    model(torch.zeros(2, *shape))
            except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
                raise ModelpressError(f"{arch_key} {architecture!r} with {args_key} {args} does not run on "
                                      f"input {shape}: {type(exc).__name__}: {exc}") from None
    _ARGUMENTS_THAT_RUN.add(key)


def _check_builtin(architecture, args, arch_key, args_key) -> None:
    import inspect

    build_fn = factory(architecture, arch_key)
    accepted = [p for p in inspect.signature(build_fn).parameters
                if p not in ("input_shape", "num_classes")]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ModelpressError(f"{args_key} {unknown} do not fit architecture {architecture!r}, which takes "
                              f"{accepted}; set {args_key} for {architecture!r} (an override of {arch_key} "
                              f"alone resets {args_key} to the architecture's defaults)")
    try:  # values: build and run once on a small stand-in input (images: 1x32x32)
        with torch.no_grad():
            build(make_spec(architecture, [1, 32, 32], 2, **args)).eval()(torch.zeros(2, 1, 32, 32))
    except (ModelpressError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelpressError(f"{args_key} {args} do not fit architecture {architecture!r}: {exc}") from None


def _check_callable(architecture, args, arch_key, args_key, code_dir, input_shape) -> None:
    fn = sources.user_callable(architecture, code_dir, arch_key)
    names, var_kw = sources.accepted_arguments(fn)
    unknown = sorted(set(args) - set(names))
    if unknown and not var_kw:
        raise ModelpressError(f"{args_key} {unknown} do not fit {architecture!r}, which takes {names}")
    if input_shape or ("input_shape" not in names and not var_kw):
        sources.build_net(architecture, list(input_shape or STAND_IN_IMAGE), 2, _ints(args), code_dir, arch_key,
                          args_key)


def _ints(args: dict) -> dict:
    return {k: _integral(v) for k, v in args.items()}


# ----------------------------------------------------------------------- build / save

def make_spec(architecture: str, input_shape, num_outputs: int, *, normalisation: dict | None = None,
              code_dir: str = "", **args) -> dict:
    """``num_outputs`` (classes, or 1 for regression) is recorded as ``args.num_classes``;
    ``code_dir`` (the user code's folder) as an absolute path, so every later step imports
    the same code."""
    spec = {"architecture": architecture,
            "args": {"input_shape": list(input_shape), "num_classes": int(num_outputs), **args}}
    if code_dir:
        spec["code_dir"] = str(Path(code_dir).expanduser().resolve())
    if normalisation:
        spec["normalisation"] = {k: normalisation[k] for k in ("kind", "mean", "std", "target") if k in normalisation}
    return spec


def build(spec: dict) -> nn.Module:
    """Build a model from its spec (source, args, normalisation and any pruned layer shapes)."""
    if not isinstance(spec, dict) or "architecture" not in spec:
        raise ModelpressError("a model spec is a dict with 'architecture' and 'args'")
    name = spec["architecture"]
    args = _ints(spec.get("args", {}))
    for key in ("input_shape", "num_classes"):
        if key not in args:
            raise ModelpressError(f"model spec for {name} lacks args.{key}")
    if sources.source_kind(name) == sources.BUILTIN:
        build_fn = factory(name)
        try:
            model = build_fn(**args)
        except TypeError as exc:
            raise ModelpressError(f"bad arguments for architecture {name!r}: {exc}") from None
    else:
        input_shape, num_classes = args.pop("input_shape"), args.pop("num_classes")
        model = sources.build_net(name, input_shape, num_classes, args, spec.get("code_dir", ""))
    norm = spec.get("normalisation")
    if norm:
        model = InputNormalised(model, norm["mean"], norm["std"], norm["kind"], norm.get("target"))
    if spec.get("layer_shapes"):
        apply_layer_shapes(model, spec["layer_shapes"])
    return model


def _integral(value):
    """KFP passes dict parameters through protobuf Struct, where every number is a float."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_integral(v) for v in value]
    return value


def _layer_kind(m: nn.Module) -> str | None:
    """The layer families whose widths pruning changes (subclasses, e.g. timm's BatchNormAct2d, included)."""
    for kind in (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d):
        if isinstance(m, kind):
            return kind.__name__
    return None


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """The widths of every conv, linear and batch-norm layer (recorded after pruning)."""
    shapes = {}
    for name, m in model.named_modules():
        kind = _layer_kind(m)
        if kind == "Conv2d":
            shapes[name] = {"type": kind, "in_channels": m.in_channels, "out_channels": m.out_channels,
                            "groups": m.groups}
        elif kind == "Linear":
            shapes[name] = {"type": kind, "in_features": m.in_features, "out_features": m.out_features}
        elif kind:
            shapes[name] = {"type": kind, "num_features": m.num_features}
    return shapes


def apply_layer_shapes(model: nn.Module, shapes: dict[str, dict]) -> None:
    """Resize layers in place to the recorded widths (weights are loaded afterwards).

    In place, not replaced: the layer keeps its class and settings (padding mode, a timm
    norm layer's activation), as Torch-Pruning leaves them.
    """
    modules = dict(model.named_modules())
    for name, s in shapes.items():
        layer = modules.get(name)
        if layer is None or _layer_kind(layer) != s["type"]:
            raise ModelpressError(f"spec.json layer_shapes names {name!r} ({s['type']}) which this "
                                  "architecture does not have; the spec and the model disagree")
        _resize(layer, s)
    for m in model.modules():  # residual flags depend on the widths
        if isinstance(m, InvertedResidual):
            convs = [c for c in m.conv.modules() if isinstance(c, nn.Conv2d)]
            m.use_residual = m.use_residual and convs[0].in_channels == convs[-1].out_channels


def _resize(layer: nn.Module, s: dict) -> None:
    def param(*shape):
        return nn.Parameter(torch.empty(*shape, dtype=layer.weight.dtype))

    if isinstance(layer, nn.Conv2d):
        layer.in_channels, layer.out_channels, layer.groups = s["in_channels"], s["out_channels"], s["groups"]
        layer.weight = param(layer.out_channels, layer.in_channels // layer.groups, *layer.kernel_size)
        if layer.bias is not None:
            layer.bias = param(layer.out_channels)
        layer.reset_parameters()
    elif isinstance(layer, nn.Linear):
        layer.in_features, layer.out_features = s["in_features"], s["out_features"]
        layer.weight = param(layer.out_features, layer.in_features)
        if layer.bias is not None:
            layer.bias = param(layer.out_features)
        layer.reset_parameters()
    else:
        n = layer.num_features = s["num_features"]
        if layer.affine:
            layer.weight, layer.bias = param(n), param(n)
        if layer.track_running_stats:
            layer.running_mean, layer.running_var = torch.zeros(n), torch.ones(n)
        layer.reset_parameters()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model: nn.Module, spec: dict, out_dir: str, extra: dict | None = None) -> None:
    """Write ``weights.safetensors`` and ``spec.json`` atomically (no pickles)."""
    from safetensors.torch import save_file

    spec = copy.deepcopy(spec)
    if extra:
        spec.setdefault("info", {}).update(extra)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(local_path(out_dir)) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"architecture": spec["architecture"]})
        write_json_atomic(tmp / SPEC_FILE, spec)


def read_spec(model_dir: str) -> dict:
    path = local_path(model_dir) / SPEC_FILE
    if not path.exists():
        raise ModelpressError(f"{model_dir} is not a torch model artifact: {SPEC_FILE} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelpressError(f"{path} is not valid JSON: {exc}") from None


def load_model(model_dir: str) -> tuple[nn.Module, dict]:
    """Rebuild from ``spec.json`` and load the weights; refuse any mismatch clearly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec = read_spec(model_dir)
    if spec.get("format") == "hf-text":
        raise ModelpressError(f"{model_dir} is a text model artifact: load it with modelpress.models.text.load_text_model")
    model = build(spec)
    weights = local_path(model_dir) / WEIGHTS_FILE
    if not weights.exists():
        raise ModelpressError(f"{model_dir} has {SPEC_FILE} but no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelpressError(f"{weights} is not a readable safetensors file: {exc}") from None
    expected = model.state_dict()
    problems = []
    for k in sorted(set(expected) - set(state)):
        problems.append(f"missing tensor {k}")
    for k in sorted(set(state) - set(expected)):
        problems.append(f"unexpected tensor {k}")
    for k in sorted(set(state) & set(expected)):
        if tuple(state[k].shape) != tuple(expected[k].shape):
            problems.append(f"{k}: weights {tuple(state[k].shape)} vs spec {tuple(expected[k].shape)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ModelpressError(f"the weights in {model_dir} do not match its spec.json "
                              f"({spec['architecture']}): {shown}. Save model and spec together "
                              "with modelpress.models.save_model.")
    model.load_state_dict(state)
    model.eval()
    return model, spec
