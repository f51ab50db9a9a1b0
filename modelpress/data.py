"""Datasets: load a source, split it, write and read the dataset artifact.

A source is one of
  - ``digits``: scikit-learn's bundled 8x8 handwritten digits (optionally resized);
  - a ``.csv`` file with numeric feature columns and a label column;
  - a ``.npz`` file with arrays ``x`` (features) and ``y`` (labels);
  - a directory of images, one sub-folder per class.
Paths may be local or ``gs://`` (read through the /gcs/ mount on Vertex).

The dataset artifact is a directory holding ``train.npz``, ``validation.npz`` and
``test.npz`` (arrays ``x`` float32 raw features, exactly what a client would send, and
``y`` int64 class indices) plus ``schema.json``. Every scorer reads the same ``test.npz``,
so models are compared on the same examples. The training split's mean/std go into the
schema, and from there into the model itself (``models.InputNormalised``), so exported and
served models take raw features too.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelpressError
from .fileio import atomic_dir, local_path, read_json, write_json_atomic

SPLITS = ("train", "validation", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SCHEMA_VERSION = 2  # 2: splits hold raw features; the model normalises


@dataclass
class RawData:
    x: np.ndarray  # float32, (N, *feature_shape), raw: what a client would send
    labels: np.ndarray  # (N,) raw labels (str)
    kind: str  # "image" or "tabular"
    source: str
    feature_names: list[str] | None = None  # a CSV's header, for the model's input description


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray


@dataclass
class Dataset:
    train: Split
    validation: Split
    test: Split
    schema: dict

    @property
    def class_names(self) -> list[str]:
        return list(self.schema["class_names"])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.schema["feature_shape"])


# ----------------------------------------------------------------------------- sources

def load_source(source: str, *, label_column: str = "label", image_size: int = 0) -> RawData:
    """Read a source into float32 raw features and raw labels; no scaling, no normalisation."""
    if not isinstance(source, str) or not source.strip():
        raise ModelpressError("dataset source is empty: use 'digits', a .csv or .npz file, "
                              "or a folder of images with one sub-folder per class")
    if image_size < 0:
        raise ModelpressError(f"image_size must be 0 (keep native size) or a positive "
                              f"number of pixels, got {image_size}")
    if source == "digits":
        return _load_digits(image_size)
    path = local_path(source)
    if not path.exists():
        raise ModelpressError(f"dataset source not found: {source} (looked at {path}). "
                              "Give 'digits', an existing .csv/.npz file or an image folder.")
    if path.is_dir():
        return _load_image_folder(path, image_size, source)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path, label_column, source)
    if suffix == ".npz":
        return _load_npz(path, image_size, source)
    raise ModelpressError(f"cannot tell the format of {source}: expected 'digits', a file "
                          "ending in .csv or .npz, or a directory of class sub-folders")


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) float images to (N, C, size, size)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                            align_corners=False)
    return out.numpy().astype(np.float32)


def _load_digits(image_size: int) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (N, 1, 8, 8), scikit-learn's 0..16
    if image_size and image_size != x.shape[-1]:
        x = _resize(x, image_size)
    labels = np.array([str(int(t)) for t in bunch.target])
    return RawData(x=x, labels=labels, kind="image", source="digits")


def _load_csv(path: Path, label_column: str, source: str) -> RawData:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ModelpressError(f"{source} is empty: it needs a header row and data rows") from None
        if label_column not in header:
            raise ModelpressError(
                f"label column {label_column!r} is not in {source}; its columns are "
                f"{header}. Set label_column to the one holding the class labels.")
        label_idx = header.index(label_column)
        feature_names = [h for i, h in enumerate(header) if i != label_idx]
        if not feature_names:
            raise ModelpressError(f"{source} has only the label column; it needs feature columns")
        rows, labels = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ModelpressError(f"{source} line {line_no}: {len(row)} fields, "
                                      f"the header has {len(header)}")
            values = []
            for i, cell in enumerate(row):
                if i == label_idx:
                    continue
                try:
                    v = float(cell)
                except ValueError:
                    raise ModelpressError(
                        f"{source} line {line_no}, column {header[i]!r}: {cell!r} is not "
                        "a number; features must be numeric (encode categories first)") from None
                if not math.isfinite(v):
                    raise ModelpressError(
                        f"{source} line {line_no}, column {header[i]!r}: {cell!r} is not "
                        "finite; remove or impute NaN/inf values first")
                values.append(v)
            rows.append(values)
            labels.append(row[label_idx].strip())
    if not rows:
        raise ModelpressError(f"{source} has a header but no data rows")
    return RawData(x=np.asarray(rows, dtype=np.float32), labels=np.asarray(labels),
                   kind="tabular", source=source, feature_names=feature_names)


def _load_npz(path: Path, image_size: int, source: str) -> RawData:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"x", "y"} - set(arrays.files)
            if missing:
                raise ModelpressError(f"{source} lacks array(s) {sorted(missing)}; it has "
                                      f"{arrays.files}. Save features as 'x' and labels as 'y'.")
            x, y = arrays["x"], arrays["y"]
    except ModelpressError:
        raise
    except Exception as exc:
        raise ModelpressError(f"{source} is not a readable .npz file ({exc}); write it with "
                              "numpy.savez(path, x=features, y=labels)") from None
    if x.shape[0] == 0:
        raise ModelpressError(f"{source} is empty: 'x' has no rows")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ModelpressError(f"{source}: 'y' must be 1-D with one label per row of 'x' "
                              f"(x has {x.shape[0]} rows, y has shape {y.shape})")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ModelpressError(f"{source}: 'x' has dtype {x.dtype}; features must be real numbers")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ModelpressError(f"{source}: 'x' holds {bad} NaN/inf value(s); remove or impute them")
    if x.ndim == 2:
        kind = "tabular"
    elif x.ndim in (3, 4):
        kind = "image"
        if x.ndim == 3:
            x = x[:, None]
        if image_size and image_size != x.shape[-1]:
            x = _resize(x, image_size)
    else:
        raise ModelpressError(f"{source}: 'x' has shape {x.shape}; expected (N, features), "
                              "(N, H, W) or (N, C, H, W)")
    return RawData(x=x, labels=np.asarray([str(v) for v in y.tolist()]), kind=kind, source=source)


def _load_image_folder(root: Path, image_size: int, source: str) -> RawData:
    from PIL import Image

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ModelpressError(f"{source} has no class sub-folders; put each class's images "
                              "in a sub-folder named after the class")
    images, labels = [], []
    for class_dir in class_dirs:
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as im:
                    im.load()
                    images.append((file, im.convert("RGB") if im.mode not in ("L", "1") else im.convert("L")))
            except Exception as exc:
                raise ModelpressError(f"cannot read image {file}: {exc}") from None
            labels.append(class_dir.name)
    if not images:
        raise ModelpressError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    rgb = any(im.mode == "RGB" for _, im in images)
    arrays = []
    sizes = {im.size for _, im in images}
    if len(sizes) > 1 and not image_size:
        examples = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
        raise ModelpressError(f"{source} has images of different sizes ({examples}); set "
                              "image_size to resize them all to one square size")
    for _, im in images:
        im = im.convert("RGB") if rgb else im
        if image_size:
            im = im.resize((image_size, image_size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32)  # 0..255, as a client decodes the image
        arrays.append(a.transpose(2, 0, 1) if a.ndim == 3 else a[None])
    return RawData(x=np.stack(arrays), labels=np.asarray(labels), kind="image", source=source)


# ------------------------------------------------------------------------------ splits

def _class_order(labels: np.ndarray) -> list[str]:
    uniq = sorted(set(labels.tolist()))
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return uniq


def split_indices(y: np.ndarray, *, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, np.ndarray]:
    """Deterministic stratified train/validation/test indices."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed)
    return {"train": np.sort(train), "validation": np.sort(val), "test": np.sort(test)}


def make_dataset(source: str, out_dir: str, *, label_column: str = "label", image_size: int = 0,
                 val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Load `source`, split it and write the dataset artifact to `out_dir`. Returns the schema."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ModelpressError(f"{name} must be between 0 and 1 (exclusive), got {frac}")
    if val_fraction + test_fraction >= 0.9:
        raise ModelpressError(f"val_fraction + test_fraction = {val_fraction + test_fraction:.2f} "
                              "leaves under 10% for training; lower them")
    raw = load_source(source, label_column=label_column, image_size=image_size)
    n = len(raw.labels)
    if n == 0:
        raise ModelpressError(f"dataset {source} is empty")
    classes = _class_order(raw.labels)
    if len(classes) < 2:
        raise ModelpressError(f"dataset {source} has {len(classes)} class ({classes}); "
                              "classification needs at least two")
    counts = {c: int((raw.labels == c).sum()) for c in classes}
    smallest = min(counts, key=counts.get)
    need = 3  # one example per class in each split at the very least
    if counts[smallest] < need:
        raise ModelpressError(
            f"class {smallest!r} has {counts[smallest]} example(s); stratified train/validation/"
            f"test splits with these fractions need at least {need} per class. Add examples or "
            "drop the class.")
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index[c] for c in raw.labels], dtype=np.int64)
    try:
        parts = split_indices(y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    except ValueError as exc:  # sklearn: a split too small to hold every class
        raise ModelpressError(f"cannot make stratified splits of {n} examples in {len(classes)} "
                              f"classes with val_fraction {val_fraction} and test_fraction "
                              f"{test_fraction} ({exc}); raise the fractions or add examples") from None

    # Normalisation statistics come from the training split only. The stored features stay
    # raw: the statistics travel in the schema and the model applies them (models.py).
    xtr = raw.x[parts["train"]]
    axes, norm_kind = ((0, 2, 3), "per-channel") if raw.kind == "image" else ((0,), "per-feature")
    mean = xtr.mean(axis=axes)
    std = xtr.std(axis=axes)
    std = np.where(std < 1e-6, 1.0, std).astype(np.float32)
    x = raw.x.astype(np.float32)

    schema = {
        "format_version": SCHEMA_VERSION,
        "task": "classification",
        "input_kind": raw.kind,
        "feature_shape": list(raw.x.shape[1:]),
        "dtype": "float32",
        "class_names": classes,
        "num_classes": len(classes),
        "class_counts": counts,
        "normalisation": {"kind": norm_kind, "mean": mean.astype(float).tolist(),
                          "std": std.astype(float).tolist(),
                          "note": "applied inside the model: (raw - mean) / std; the splits hold raw features"},
        "input": describe_input(raw),
        "source": source,
        "label_column": label_column if raw.kind == "tabular" and source.lower().endswith(".csv") else None,
        "image_size": image_size or None,
        "seed": seed,
        "fractions": {"validation": val_fraction, "test": test_fraction},
        "splits": {k: int(len(v)) for k, v in parts.items()},
    }
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            np.savez(tmp / f"{name}.npz", x=x[parts[name]], y=y[parts[name]])
        write_json_atomic(tmp / "schema.json", schema)
    return schema


def describe_input(raw: RawData) -> dict:
    """What a client sends the trained model: shape, dtype, value range, layout, channels."""
    info = {"dtype": "float32", "shape": [-1, *raw.x.shape[1:]],
            "value_range": [float(raw.x.min()), float(raw.x.max())],
            "preprocessing": "none: send raw features; the model normalises them inside its graph"}
    if raw.kind == "image":
        channels = raw.x.shape[1]
        info.update(layout="NCHW", channels={1: "grey", 3: "RGB"}.get(channels, f"{channels} channels"))
        info["pixels"] = ("scikit-learn digits: ink 0 (background) to 16" if raw.source == "digits"
                          else "as decoded from the files (0..255 for 8-bit images), not rescaled")
    else:
        info["layout"] = "NF (rows of features)"
        if raw.feature_names:
            info["feature_names"] = list(raw.feature_names)
    return info


def load_dataset(path: str) -> Dataset:
    root = local_path(path)
    schema_path = root / "schema.json"
    if not schema_path.exists():
        raise ModelpressError(f"{path} is not a dataset artifact: schema.json is missing. "
                              "Create one with the dataset step (modelpress.data.make_dataset).")
    schema = read_json(schema_path)
    if schema.get("format_version") != SCHEMA_VERSION:
        raise ModelpressError(f"{path} is a dataset artifact of format {schema.get('format_version')}, "
                              f"this modelpress reads format {SCHEMA_VERSION} (raw features; the model "
                              "normalises). Make it again: rerun the pipeline with --no-cache.")
    splits = {}
    for name in SPLITS:
        with np.load(root / f"{name}.npz", allow_pickle=False) as a:
            splits[name] = Split(x=a["x"], y=a["y"])
    return Dataset(train=splits["train"], validation=splits["validation"], test=splits["test"],
                   schema=schema)
