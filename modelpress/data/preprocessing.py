"""Preprocessing that matches the user's model: channel conversion and the normalisation
statistics the model applies inside its graph.

The stored features stay raw (what a client sends). Every normalisation is therefore
expressed in raw units: a model trained on ImageNet expects RGB scaled to [0, 1] and then
normalised with ImageNet's mean/std, which for raw pixels of maximum ``scale`` is the same
as ``(raw - mean * scale) / (std * scale)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.data.sources import RawData

NORMALISE_PRESETS = ("dataset", "imagenet", "none")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNEL_CHOICES = (0, 1, 3)
LUMA_601 = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL's convert("L") uses
MIN_STD = 1e-6  # a constant feature gets std 1 instead of a division by ~0
NORMALISE_HINT = ("normalise must be 'dataset' (training-split mean/std), 'imagenet', 'none' or "
                  "{mean: [...], std: [...]} (one value per channel for images, per feature for tables)")


def parse_normalise(normalise) -> str | dict:
    """Check the `normalise` option before any data is read: a preset name, or {"mean", "std"}
    lists of numbers (a JSON string of that mapping is accepted too, as pipeline parameters are
    strings)."""
    if isinstance(normalise, str):
        text = normalise.strip()
        if text.startswith("{"):
            try:
                normalise = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ModelpressError(f"normalise {text!r} is not valid JSON ({exc}); {NORMALISE_HINT}") from None
        elif text.lower() in NORMALISE_PRESETS:
            return text.lower()
        else:
            raise ModelpressError(f"unknown normalise {normalise!r}; {NORMALISE_HINT}")
    if not isinstance(normalise, dict):
        raise ModelpressError(f"normalise is a {type(normalise).__name__}; {NORMALISE_HINT}")
    keys = set(normalise)
    if keys != {"mean", "std"}:
        raise ModelpressError(f"normalise mapping has keys {sorted(keys)}; it needs exactly 'mean' and 'std' "
                              "lists, e.g. {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}")
    out = {}
    for key in ("mean", "std"):
        values = normalise[key]
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, (list, tuple)) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ModelpressError(f"normalise {key} must be a non-empty list of finite numbers, got {values!r}")
        out[key] = [float(v) for v in values]
    if len(out["mean"]) != len(out["std"]):
        raise ModelpressError(f"normalise has {len(out['mean'])} mean value(s) but {len(out['std'])} std "
                              "value(s); give one of each per channel (images) or per feature (tables)")
    if any(v <= 0 for v in out["std"]):
        raise ModelpressError(f"normalise std must be > 0 (it divides the input), got {out['std']}")
    return out


def check_channels(channels) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels not in CHANNEL_CHOICES:
        raise ModelpressError(f"channels must be 0 (keep the data's channels), 1 (grey) or 3 (RGB), "
                              f"got {channels!r}")
    return channels


def convert_channels(raw: RawData, channels: int, log=print) -> RawData:
    """Grey -> RGB by repeating the one channel, RGB -> grey by ITU-R 601 luma; 0 keeps them."""
    if not channels:
        return raw
    if raw.kind != "image":
        raise ModelpressError(f"channels: {channels} applies to images; {raw.source} is tabular "
                              f"({raw.x.shape[1]} features). Remove `channels` (or set it to 0).")
    have = raw.x.shape[1]
    if have == channels:
        return raw
    x = channel_images(raw.x, channels)
    log(f"[make-dataset] channels: {channels}, " + ("grey images repeated into 3 identical RGB channels"
                                                   if channels == 3 else "RGB images turned grey (ITU-R 601 luma)"))
    return replace(raw, x=x)


def channel_images(x: np.ndarray, channels: int) -> np.ndarray:
    """(N, C, H, W) images with `channels` channels: grey -> RGB by repeating the one channel, RGB ->
    grey by ITU-R 601 luma; the training data and batch prediction convert with this one function."""
    have = x.shape[1]
    if have == channels:
        return x
    if (have, channels) == (1, 3):
        out = np.repeat(x, 3, axis=1)
    elif (have, channels) == (3, 1):
        luma = np.asarray(LUMA_601, dtype=np.float32).reshape(1, 3, 1, 1)
        out = (x * luma).sum(axis=1, keepdims=True, dtype=np.float32)
    else:
        raise ModelpressError(f"cannot turn {have}-channel images into {channels} channel(s): channels "
                              "converts grey (1) to RGB (3) and back. Convert the images yourself or set "
                              "channels: 0 to keep them.")
    return np.ascontiguousarray(out, dtype=np.float32)


def _count(raw: RawData) -> tuple[int, str]:
    if raw.kind == "image":
        return int(raw.x.shape[1]), "channel"
    return int(raw.x.shape[1]), "feature"


def normalisation(raw: RawData, x_train: np.ndarray, normalise: str | dict, log=print) -> dict:
    """schema["normalisation"]: the statistics the model applies, ``(raw - mean) / std``."""
    image = raw.kind == "image"
    kind = "per-channel" if image else "per-feature"
    count, unit = _count(raw)
    extra: dict = {}
    if normalise == "dataset":
        axes = (0, 2, 3) if image else (0,)
        # computed exactly as before presets existed, so existing datasets keep their numbers
        mean = x_train.mean(axis=axes).astype(float).tolist()
        std = x_train.std(axis=axes)
        std = np.where(std < MIN_STD, 1.0, std).astype(np.float32).astype(float).tolist()
        preset = "dataset"
    elif normalise == "none":
        mean, std, preset = [0.0] * count, [1.0] * count, "none"
    elif normalise == "imagenet":
        if not image or count != 3:
            what = f"{count}-channel images" if image else f"tabular data ({count} features)"
            raise ModelpressError(
                f"normalise: imagenet needs 3-channel (RGB) images; {raw.source} gives {what}. "
                + ("Set channels: 3 to repeat grey into RGB, " if image and count == 1 else "")
                + "or use normalise: dataset (or your own {mean: [...], std: [...]}).")
        scale = raw.pixel_scale
        if scale is None:
            raise ModelpressError(
                f"normalise: imagenet needs the raw pixel maximum, and {raw.source}'s values "
                f"({float(raw.x.min()):g}..{float(raw.x.max()):g}) fit neither [0, 1] nor 8/16-bit pixels; "
                "give the statistics in your pixels' units: normalise: {mean: [...], std: [...]}")
        mean = [m * scale for m in IMAGENET_MEAN]
        std = [s * scale for s in IMAGENET_STD]
        preset, extra = "imagenet", {"pixel_scale": scale}
        log(f"[make-dataset] normalise: imagenet, raw pixels 0..{scale:g} -> mean "
            f"{[round(m, 4) for m in mean]}, std {[round(s, 4) for s in std]} (ImageNet's statistics "
            f"times the pixel scale {scale:g})")
    else:
        if len(normalise["mean"]) != count:
            raise ModelpressError(
                f"normalise gives {len(normalise['mean'])} mean/std value(s); {raw.source} has {count} "
                f"{unit}(s) (feature shape {list(raw.x.shape[1:])}): give one value per {unit}")
        mean, std, preset = list(normalise["mean"]), list(normalise["std"]), "custom"
    note = "applied inside the model: (raw - mean) / std; the splits hold raw features"
    return {"kind": kind, "mean": mean, "std": std, "preset": preset, **extra, "note": note}
