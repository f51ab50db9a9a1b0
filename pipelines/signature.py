"""A pipeline's parameters as ``{name: (type_name, default)}`` for config checks, once per (pipeline, target)."""

from __future__ import annotations

import copy
import functools

from pipelines.registry import build
from pipelines.targets import Target


def signature(name: str, target: Target) -> dict[str, tuple[str, object]]:
    """A copy each call (defaults include dicts and lists): the cached one stays as compiled."""
    return copy.deepcopy(_signature(name, target))


@functools.lru_cache(maxsize=None)
def _signature(name: str, target: Target) -> dict[str, tuple[str, object]]:
    return {key: (spec.type, spec.default) for key, spec in build(name, target).component_spec.inputs.items()}
