"""YAML configuration: loading, `--set key=value` overrides and validation.

Pipelines expose their parameters as a signature ``{name: (type_name, default)}`` with KFP's
type names (String, Integer, Float, Boolean, Dict, List); this module checks a config
against it without importing KFP.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from .errors import ModelpressError

_PY_TYPES = {
    "String": (str,), "Integer": (int,), "Float": (float, int), "Boolean": (bool,),
    "Dict": (dict,), "List": (list,),
}


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise ModelpressError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ModelpressError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ModelpressError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def check_keys(data: dict, allowed: set[str] | list[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ModelpressError(f"unknown key(s) in {where}: {', '.join(hints)}. "
                              f"Valid keys: {', '.join(sorted(allowed))}")


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=3", "model_args={channels: [8]}"]`` -> dict, values parsed as YAML."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ModelpressError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ModelpressError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return out


def check_parameters(values: dict, signature: dict[str, tuple[str, object]], pipeline: str) -> dict:
    """Reject unknown keys and wrongly typed values; return the values to pass."""
    check_keys(values, list(signature), f"the parameters of pipeline {pipeline!r}")
    out = {}
    for key, value in values.items():
        type_name = signature[key][0]
        accepted = _PY_TYPES.get(type_name)
        bad_bool = isinstance(value, bool) and type_name != "Boolean"
        if accepted and (not isinstance(value, accepted) or bad_bool):
            raise ModelpressError(f"parameter {key!r} of pipeline {pipeline!r} must be "
                                  f"{type_name}, got {value!r} ({type(value).__name__})")
        out[key] = float(value) if type_name == "Float" else value
    validate_values({**{k: d for k, (_, d) in signature.items()}, **out})
    return out


def validate_values(values: dict) -> None:
    """Range checks for the parameters the library knows, before any step starts."""
    from dataclasses import fields

    from . import models
    from .training import TrainSettings

    names = {f.name for f in fields(TrainSettings)}
    TrainSettings(**{k: v for k, v in values.items() if k in names}).validate()
    for key in ("val_fraction", "test_fraction"):
        if key in values and not 0 < values[key] < 1:
            raise ModelpressError(f"{key} must be between 0 and 1 (exclusive), got {values[key]}")
    if "image_size" in values and values["image_size"] < 0:
        raise ModelpressError(f"image_size must be 0 (native) or positive, got {values['image_size']}")
    if "architecture" in values and values["architecture"] not in models.architectures():
        raise ModelpressError(f"unknown architecture {values['architecture']!r}; choose one of "
                              f"{models.architectures()}")
