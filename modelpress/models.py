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
from typing import Callable

import torch
from torch import nn

from . import runtime
from .errors import ModelpressError
from .fileio import atomic_dir, local_path, write_json_atomic

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def architectures() -> list[str]:
    return sorted(_REGISTRY)


# -------------------------------------------------------------------------------- mlp

@register("mlp")
def _mlp(input_shape, num_classes, hidden=(256, 128), dropout=0.1):
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# -------------------------------------------------------------------------------- cnn

def _conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class SmallCNN(nn.Module):
    """Two conv blocks per stage, max-pool between stages, global average pool, linear."""

    def __init__(self, input_shape, num_classes, channels=(32, 64), dropout=0.1):
        super().__init__()
        cin = input_shape[0]
        stages = []
        for i, c in enumerate(channels):
            stages += [_conv_bn(cin, c), _conv_bn(c, c)]
            if i < len(channels) - 1:
                stages.append(nn.MaxPool2d(2))
            cin = c
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register("cnn")
def _cnn(input_shape, num_classes, channels=(32, 64), dropout=0.1):
    _require_image(input_shape, "cnn")
    return SmallCNN(input_shape, num_classes, channels, dropout)


# ----------------------------------------------------------------------- mobilenet_v2

def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual add."""

    def __init__(self, cin, cout, stride, expand_ratio):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn(cin, hidden, k=1))
        layers += [
            _conv_bn(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # t (expansion), c (channels), n (repeats), s (stride of the first repeat)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, input_shape, num_classes, width_mult=1.0, last_channel=1280, dropout=0.2,
                 stem_stride=None):
        super().__init__()
        cin = _make_divisible(32 * width_mult)
        # Small inputs (digits, CIFAR-sized) keep resolution in the stem: stride 1 below 64 px.
        if stem_stride is None:
            stem_stride = 1 if input_shape[-1] < 64 else 2
        layers: list[nn.Module] = [_conv_bn(input_shape[0], cin, stride=stem_stride)]
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult))
        layers.append(_conv_bn(cin, self.last_channel, k=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.last_channel, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


@register("mobilenet_v2")
def _mobilenet_v2(input_shape, num_classes, width_mult=1.0, last_channel=1280, dropout=0.2, stem_stride=None):
    _require_image(input_shape, "mobilenet_v2")
    if width_mult <= 0:
        raise ModelpressError(f"mobilenet_v2 width_mult must be positive, got {width_mult}")
    if stem_stride not in (None, 1, 2):
        raise ModelpressError(f"mobilenet_v2 stem_stride must be 1 or 2, got {stem_stride}")
    return MobileNetV2(input_shape, num_classes, width_mult, last_channel, dropout, stem_stride)


def _require_image(input_shape, name):
    if len(input_shape) != 3:
        raise ModelpressError(f"{name} needs image input (channels, height, width); this dataset's "
                              f"feature shape is {list(input_shape)}. Use 'mlp' for tabular data.")


# ---------------------------------------------------------------------- normalisation

class InputNormalised(nn.Module):
    """(raw - mean) / std in front of the network, so the model takes raw features.

    The statistics are non-persistent buffers rebuilt from the spec: the weights file holds
    only what training learnt, and the export folds them into the graph as constants.
    """

    def __init__(self, net: nn.Module, mean, std, kind: str):
        super().__init__()
        if kind not in ("per-channel", "per-feature"):
            raise ModelpressError(f"normalisation kind must be per-channel or per-feature, got {kind!r}")
        shape = (1, -1, 1, 1) if kind == "per-channel" else (1, -1)
        self.net = net
        # these names become the ONNX constants' names, which quantisation keeps in fp32
        assert runtime.NORMALISATION_CONSTANTS == ("mean", "inv_std")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).reshape(shape),
                             persistent=False)

    def forward(self, x):
        return self.net((x - self.mean) * self.inv_std)


def unwrap(model: nn.Module) -> nn.Module:
    """The architecture inside any input normalisation."""
    return model.net if isinstance(model, InputNormalised) else model


# ---------------------------------------------------------------------- checking args

def check_arguments(architecture: str, args: dict, arch_key: str = "architecture",
                    args_key: str = "model_args") -> None:
    """Refuse an unknown architecture, or arguments it does not take, before anything runs."""
    import inspect

    if architecture not in _REGISTRY:
        raise ModelpressError(f"{arch_key}: unknown architecture {architecture!r}; choose one of {architectures()}")
    if not isinstance(args, dict):
        raise ModelpressError(f"{args_key} must be a mapping of arguments, e.g. {{channels: [16, 32]}}")
    accepted = [p for p in inspect.signature(_REGISTRY[architecture]).parameters
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
    if name not in _REGISTRY:
        raise ModelpressError(f"unknown architecture {name!r}; choose one of {architectures()}")
    args = {k: _integral(v) for k, v in spec.get("args", {}).items()}
    for key in ("input_shape", "num_classes"):
        if key not in args:
            raise ModelpressError(f"model spec for {name} lacks args.{key}")
    try:
        model = _REGISTRY[name](**args)
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
