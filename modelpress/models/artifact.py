"""Model registry, and the torch model artifact: ``weights.safetensors`` + ``spec.json``.

A spec is a plain dict: ``{"architecture": name, "args": {...}}``, where ``args`` always
holds ``input_shape`` and ``num_classes``. Structured pruning changes layer widths; the
new shapes go into ``spec["layer_shapes"]`` so the model is rebuilt without pickles.
``spec["normalisation"]`` (the dataset's training-split mean/std) wraps the architecture in
``InputNormalised``: the model takes raw features, so its ONNX export, its quantised,
pruned and distilled variants and the served model all do too.
"""

from __future__ import annotations

import copy
import json

import torch
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.models.architectures import InputNormalised, InvertedResidual, factory

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"


# ---------------------------------------------------------------------- checking args

_ARGUMENTS_THAT_RUN: set[str] = set()  # (architecture, args) already built and run by check_arguments

def check_arguments(architecture: str, args: dict, arch_key: str = "architecture",
                    args_key: str = "model_args") -> None:
    """Refuse an unknown architecture, or arguments it does not take, before anything runs."""
    import inspect

    build_fn = factory(architecture, arch_key)
    if not isinstance(args, dict):
        raise ModelpressError(f"{args_key} must be a mapping of arguments, e.g. {{channels: [16, 32]}}")
    accepted = [p for p in inspect.signature(build_fn).parameters
                if p not in ("input_shape", "num_classes")]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ModelpressError(f"{args_key} {unknown} do not fit architecture {architecture!r}, which takes "
                              f"{accepted}; set {args_key} for {architecture!r} (an override of {arch_key} "
                              f"alone resets {args_key} to the architecture's defaults)")
    key = json.dumps([architecture, args], sort_keys=True, default=str)
    if key in _ARGUMENTS_THAT_RUN:  # a config load checks every pipeline: build each model once
        return
    try:  # values: build and run once on a small stand-in input (images: 1x32x32)
        with torch.no_grad():
            build(make_spec(architecture, [1, 32, 32], 2, **args)).eval()(torch.zeros(2, 1, 32, 32))
    except (ModelpressError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelpressError(f"{args_key} {args} do not fit architecture {architecture!r}: {exc}") from None
    _ARGUMENTS_THAT_RUN.add(key)


# ----------------------------------------------------------------------- build / save

def make_spec(architecture: str, input_shape, num_classes: int, *, normalisation: dict | None = None,
              **args) -> dict:
    spec = {"architecture": architecture,
            "args": {"input_shape": list(input_shape), "num_classes": int(num_classes), **args}}
    if normalisation:
        spec["normalisation"] = {k: normalisation[k] for k in ("kind", "mean", "std")}
    return spec


def build(spec: dict) -> nn.Module:
    """Build a model from its spec (architecture, args and any pruned layer shapes)."""
    if not isinstance(spec, dict) or "architecture" not in spec:
        raise ModelpressError("a model spec is a dict with 'architecture' and 'args'")
    name = spec["architecture"]
    build_fn = factory(name)
    args = {k: _integral(v) for k, v in spec.get("args", {}).items()}
    for key in ("input_shape", "num_classes"):
        if key not in args:
            raise ModelpressError(f"model spec for {name} lacks args.{key}")
    try:
        model = build_fn(**args)
    except TypeError as exc:
        raise ModelpressError(f"bad arguments for architecture {name!r}: {exc}") from None
    norm = spec.get("normalisation")
    if norm:
        model = InputNormalised(model, norm["mean"], norm["std"], norm["kind"])
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


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """The widths of every conv, linear and batch-norm layer (recorded after pruning)."""
    shapes = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"type": "Conv2d", "in_channels": m.in_channels,
                            "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"type": "Linear", "in_features": m.in_features,
                            "out_features": m.out_features}
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            shapes[name] = {"type": type(m).__name__, "num_features": m.num_features}
    return shapes


def apply_layer_shapes(model: nn.Module, shapes: dict[str, dict]) -> None:
    """Replace layers in place with the recorded widths (weights are loaded afterwards)."""
    modules = dict(model.named_modules())
    for name, s in shapes.items():
        old = modules.get(name)
        if old is None or type(old).__name__ != s["type"]:
            raise ModelpressError(f"spec.json layer_shapes names {name!r} ({s['type']}) which this "
                                  "architecture does not have; the spec and the model disagree")
        if isinstance(old, nn.Conv2d):
            new = nn.Conv2d(s["in_channels"], s["out_channels"], old.kernel_size, old.stride,
                            old.padding, old.dilation, s["groups"], old.bias is not None)
        elif isinstance(old, nn.Linear):
            new = nn.Linear(s["in_features"], s["out_features"], old.bias is not None)
        else:
            new = type(old)(s["num_features"], eps=old.eps, momentum=old.momentum)
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, new)
    for m in model.modules():  # residual flags depend on the widths
        if isinstance(m, InvertedResidual):
            convs = [c for c in m.conv.modules() if isinstance(c, nn.Conv2d)]
            m.use_residual = m.use_residual and convs[0].in_channels == convs[-1].out_channels


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
