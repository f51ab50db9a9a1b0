"""Cutting a model into pipeline stages: the model as a flat list of layers, cuts of
near-equal forward FLOPs, and the activation shapes that cross each cut.

A model can be cut when it is an ``nn.Sequential`` (mlp), or when its forward is
``classifier(dropout(flatten(pool(features(x)))))`` with ``features`` an ``nn.Sequential``
(cnn, mobilenet_v2, and any architecture built the same way), optionally behind
`models.InputNormalised`. The flat layers are checked against the model's own forward, so a
model that has those parts but runs them differently is refused rather than mis-trained.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import nn

from modelpress import models
from modelpress.core.errors import ModelpressError
from modelpress.models import flops as flops_mod

# the parts of a classifier whose forward is classifier(dropout(flatten(pool(features(x)))))
HEAD_PARTS = ("features", "pool", "dropout", "classifier")


def pipeline_layers(model: nn.Module) -> list[tuple[str | None, nn.Module]]:
    """The model as a flat sequence of (state-dict prefix, layer) that reproduces its forward."""
    if isinstance(model, models.InputNormalised):  # normalisation first, then the network's layers
        return [(None, _Normalise(model))] + [(None if p is None else f"net.{p}", m)
                                              for p, m in pipeline_layers(model.net)]
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    if _has_head_layout(model):
        return ([(f"features.{name}", m) for name, m in model.features.named_children()]
                + [("pool", model.pool), (None, nn.Flatten(1)), ("dropout", model.dropout),
                   ("classifier", model.classifier)])
    raise ModelpressError(f"pipeline parallelism cannot cut a {type(model).__name__} into stages; "
                          "it knows sequential models (mlp) and models whose forward is "
                          "features -> pool -> flatten -> dropout -> classifier (cnn, mobilenet_v2). "
                          "Use parallelism 'ddp' for this architecture.")


def _has_head_layout(model: nn.Module) -> bool:
    children = dict(model.named_children())
    return all(isinstance(children.get(name), nn.Module) for name in HEAD_PARTS) \
        and isinstance(children["features"], nn.Sequential)


class _Normalise(nn.Module):
    """InputNormalised's own step, as a layer a pipeline stage can hold."""

    def __init__(self, wrapper: nn.Module):
        super().__init__()
        self.register_buffer("mean", wrapper.mean.clone(), persistent=False)
        self.register_buffer("inv_std", wrapper.inv_std.clone(), persistent=False)

    def forward(self, x):
        return (x - self.mean) * self.inv_std


def balance(costs: list[float], stages: int, cuttable: list[int] | None = None) -> list[tuple[int, int]]:
    """Cut a sequence of layer costs into `stages` contiguous, non-empty, near-equal runs.

    `cuttable` lists the layer indices a stage may start at (default: any).
    """
    n = len(costs)
    allowed = sorted(set(range(1, n) if cuttable is None else cuttable) & set(range(1, n)))
    if stages - 1 > len(allowed):
        raise ModelpressError(f"the model can be cut in {len(allowed) + 1} stages at most, fewer than "
                              f"{stages} processes; run at most {len(allowed) + 1} processes in all "
                              "(nproc_per_node x nodes) for pipeline parallelism")
    prefix = list(itertools.accumulate(costs))
    cuts = [0]
    for k in range(1, stages):
        target = prefix[-1] * k / stages
        later = [c for c in allowed if c > cuts[-1]]
        candidates = later[:len(later) - (stages - 1 - k)]  # leave a cut for every later stage
        cuts.append(min(candidates, key=lambda c: abs(prefix[c - 1] - target)))
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:]))


def _owns(prefixes: list[str], key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def cut_stages(model: nn.Module, feature_shape, stages: int, micro: int):
    """Cut the model into `stages` stages of near-equal forward FLOPs.

    Returns the flat layers, each stage's (first, end) layer range, and one micro-batch's
    activation at every boundary: the model input, then each stage's output.
    """
    layers = pipeline_layers(model)
    _check_reproduces(model, layers, feature_shape)
    _, per_layer = flops_mod.forward_flops(model, feature_shape, per_layer=True)
    costs = [1 + sum(f for name, f in per_layer.items() if prefix is not None and _owns([prefix], name))
             for prefix, _ in layers]
    # a stage may not start with an in-place layer: it would overwrite the activation it receives
    bounds = balance(costs, stages, [i for i, (_, m) in enumerate(layers) if not getattr(m, "inplace", False)])
    return layers, bounds, _boundary_activations(layers, bounds, feature_shape, micro)


@contextlib.contextmanager
def _evaluating(modules):
    """Eval mode for a while, so batch-norm running statistics stay untouched; then each
    module's own mode again."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, was in modes:
            m.training = was


@torch.no_grad()
def _check_reproduces(model: nn.Module, layers, feature_shape) -> None:
    """The flat layers must compute the model's forward: the layout is recognised by its parts'
    names, not by the model's class."""
    # a generator of its own: the global one seeds the ranks' dropout masks
    x = torch.randn((2, *feature_shape), generator=torch.Generator().manual_seed(0))
    with _evaluating([model] + [m for _, m in layers]):
        y = x
        for _, layer in layers:
            y = layer(y)
        expected = model(x)
    if y.shape != expected.shape or not torch.allclose(y, expected, rtol=1e-4, atol=1e-5):
        raise ModelpressError(f"pipeline parallelism cannot cut a {type(model).__name__} into stages: it has "
                              f"the parts {list(HEAD_PARTS)} but its forward does not run them in that "
                              "order. Use parallelism 'ddp' for this architecture.")


@torch.no_grad()
def _boundary_activations(layers, bounds, feature_shape, micro: int) -> list[torch.Tensor]:
    """One micro-batch's activation at every stage boundary: the model input, then each stage's output.

    Run in eval mode so batch-norm running statistics stay untouched; the stages get these
    shapes up front instead of inferring them from a forward pass on uninitialised tensors.
    """
    x = torch.zeros((micro, *feature_shape))
    acts = [x]
    with _evaluating([m for _, m in layers]):
        for a, b in bounds:
            for _, layer in layers[a:b]:
                x = layer(x)
            # stage inputs past the first and every output carry gradients: say so in the metadata
            acts.append(x.detach().requires_grad_(True))
    return acts
