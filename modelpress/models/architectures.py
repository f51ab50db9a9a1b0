"""The built-in architectures (mlp, cnn, mobilenet_v2), their registry, and the input
normalisation every model built from a dataset carries in front of its network."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from modelpress.core.errors import ModelpressError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn
    return deco


def factory(name: str, key: str = "architecture") -> Callable[..., nn.Module]:
    """The builder registered as `name`; `key` names the setting in the error."""
    if name not in _REGISTRY:
        raise ModelpressError(f"{key}: unknown architecture {name!r}; choose one of {architectures()}, or name "
                              "torchvision:<name>, timm:<name> or your own package.module:callable")
    return _REGISTRY[name]


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
    """(raw - mean) / std in front of the network, so the model takes raw features; for
    regression also ``output * target_std + target_mean`` behind it, so the network learns
    standardised targets and the model answers in the target's own units.

    The statistics are non-persistent buffers rebuilt from the spec: the weights file holds
    only what training learnt, and the export folds them into the graph as constants.
    """

    def __init__(self, net: nn.Module, mean, std, kind: str, target: dict | None = None):
        super().__init__()
        if kind not in ("per-channel", "per-feature"):
            raise ModelpressError(f"normalisation kind must be per-channel or per-feature, got {kind!r}")
        shape = (1, -1, 1, 1) if kind == "per-channel" else (1, -1)
        self.net = net
        # these names become the ONNX constants' names (export.runtime.NORMALISATION_CONSTANTS),
        # which quantisation keeps in fp32
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).reshape(shape),
                             persistent=False)
        self.has_target = bool(target)
        if target:
            self.register_buffer("target_mean", torch.tensor(float(target["mean"])), persistent=False)
            self.register_buffer("target_std", torch.tensor(float(target["std"])), persistent=False)

    def forward(self, x):
        out = self.net((x - self.mean) * self.inv_std)
        return out * self.target_std + self.target_mean if self.has_target else out


def unwrap(model: nn.Module) -> nn.Module:
    """The architecture inside any input normalisation."""
    return model.net if isinstance(model, InputNormalised) else model
