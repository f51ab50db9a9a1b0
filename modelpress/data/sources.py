"""Dataset sources: the built-in digits and diabetes, CSV, NPZ and image folders, read into raw
features and raw labels.

Paths may be local or ``gs://`` (read through the /gcs/ mount on Vertex). Nothing is scaled or
normalised here: the features stay what a client would send the trained model.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# sources that are names, not paths, and the task each one is
BUILTIN_TASKS = {"digits": "classification", "diabetes": "regression"}
BUILTIN_SOURCES = tuple(BUILTIN_TASKS)
SOURCE_HINT = "'digits', 'diabetes', a .csv or .npz file, or a folder of images with one sub-folder per class"


@dataclass
class RawData:
    x: np.ndarray  # float32, (N, *feature_shape), raw: what a client would send
    labels: np.ndarray  # (N,) raw labels (str)
    kind: str  # "image" or "tabular"
    source: str
    feature_names: list[str] | None = None  # a CSV's header, for the model's input description
    numeric_labels: np.ndarray | None = None  # (N,) float64 when the source stores numbers (NPZ, built-ins)
    line_numbers: np.ndarray | None = None  # (N,) a CSV row's line in the file, to name bad rows
    pixel_scale: float | None = None  # images: the raw pixel maximum (16 digits, 255 8-bit images)
    target_name: str | None = None  # what the label is called (CSV column, "y" in an NPZ)

    def where(self, i: int) -> str:
        """Where example `i` lives in the source, in the user's terms (line number, array index)."""
        if self.line_numbers is not None:
            return f"{self.source} line {int(self.line_numbers[i])}"
        if self.source.lower().endswith(".npz"):
            return f"{self.source} y[{i}]"
        return f"{self.source} example {i}"


def load_source(source: str, *, label_column: str = "label", image_size: int = 0) -> RawData:
    """Read a source into float32 raw features and raw labels; no scaling, no normalisation."""
    if not isinstance(source, str) or not source.strip():
        raise ModelpressError(f"dataset source is empty: use {SOURCE_HINT}")
    if image_size < 0:
        raise ModelpressError(f"image_size must be 0 (keep native size) or a positive "
                              f"number of pixels, got {image_size}")
    if source == "digits":
        return _load_digits(image_size)
    if source == "diabetes":
        return _load_diabetes()
    path = local_path(source)
    if not path.exists():
        raise ModelpressError(f"dataset source not found: {source} (looked at {path}). "
                              f"Give {SOURCE_HINT}.")
    if path.is_dir():
        return _load_image_folder(path, image_size, source)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path, label_column, source)
    if suffix == ".npz":
        return _load_npz(path, image_size, source)
    raise ModelpressError(f"cannot tell the format of {source}: expected 'digits', 'diabetes', "
                          "a file ending in .csv or .npz, or a directory of class sub-folders")


def resize_images(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) float images to (N, C, size, size) (or (N, C, H', W') for a pair)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(x), size=size if isinstance(size, tuple) else (size, size),
                            mode="bilinear", align_corners=False)
    return out.numpy().astype(np.float32)


def _load_digits(image_size: int) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (N, 1, 8, 8), scikit-learn's 0..16
    if image_size and image_size != x.shape[-1]:
        x = resize_images(x, image_size)
    labels = np.array([str(int(t)) for t in bunch.target])
    return RawData(x=x, labels=labels, kind="image", source="digits",
                   numeric_labels=bunch.target.astype(np.float64), pixel_scale=16.0, target_name="digit")


def _load_diabetes() -> RawData:
    """scikit-learn's bundled diabetes data: 442 patients, 10 baseline measurements in their own
    units (age in years, sex 1/2, BMI, ...; not scikit-learn's pre-scaled copy, so a client sends
    what it measures) and a disease-progression score a year later."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes(scaled=False)
    target = bunch.target.astype(np.float64)
    return RawData(x=bunch.data.astype(np.float32), labels=np.array([repr(float(t)) for t in target]),
                   kind="tabular", source="diabetes", feature_names=list(bunch.feature_names),
                   numeric_labels=target, target_name="target")


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
        rows, labels, line_numbers = [], [], []
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
            line_numbers.append(line_no)
    if not rows:
        raise ModelpressError(f"{source} has a header but no data rows")
    return RawData(x=np.asarray(rows, dtype=np.float32), labels=np.asarray(labels),
                   kind="tabular", source=source, feature_names=feature_names,
                   line_numbers=np.asarray(line_numbers), target_name=label_column)


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
    numeric_y = (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_) and not np.issubdtype(
        y.dtype, np.complexfloating)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ModelpressError(f"{source}: 'x' has dtype {x.dtype}; features must be real numbers")
    integer_pixels = np.issubdtype(x.dtype, np.integer)
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
            x = resize_images(x, image_size)
    else:
        raise ModelpressError(f"{source}: 'x' has shape {x.shape}; expected (N, features), "
                              "(N, H, W) or (N, C, H, W)")
    return RawData(x=x, labels=np.asarray([str(v) for v in y.tolist()]), kind=kind, source=source,
                   numeric_labels=y.astype(np.float64) if numeric_y else None,
                   pixel_scale=_pixel_scale(x, integer_pixels) if kind == "image" else None, target_name="y")


def _pixel_scale(x: np.ndarray, integer_pixels: bool) -> float | None:
    """The raw maximum of an NPZ's pixel range, guessed from its values: [0, 1] floats, 8-bit or
    16-bit integers; None when it fits none of them (then only explicit statistics apply)."""
    low, high = float(x.min()), float(x.max())
    if low < 0:
        return None
    if high <= 1.0 and not integer_pixels:
        return 1.0
    for scale in (255.0, 65535.0):
        if high <= scale:
            return scale
    return None


def decode_image(file: Path):
    """An image file decoded as training reads it: grey ("L") stays grey, anything else becomes RGB.
    An unreadable file is a ModelpressError naming it."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            im.load()
            return im.convert("RGB") if im.mode not in ("L", "1") else im.convert("L")
    except Exception as exc:
        raise ModelpressError(f"cannot read image {file}: {exc}") from None


def image_array(im, *, rgb: bool, size: tuple[int, int] | None = None) -> np.ndarray:
    """A decoded image as float32 (C, H, W) raw pixels (0..255 for 8-bit images, as a client decodes
    it): RGB when `rgb`, resized bilinearly to `size` (height, width) when given and different."""
    from PIL import Image

    im = im.convert("RGB") if rgb and im.mode != "RGB" else im
    if size and (im.height, im.width) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]


def _load_image_folder(root: Path, image_size: int, source: str) -> RawData:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ModelpressError(f"{source} has no class sub-folders; put each class's images "
                              "in a sub-folder named after the class")
    images, labels = [], []
    for class_dir in class_dirs:
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            images.append((file, decode_image(file)))
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
        arrays.append(image_array(im, rgb=rgb, size=(image_size, image_size) if image_size else None))
    return RawData(x=np.stack(arrays), labels=np.asarray(labels), kind="image", source=source,
                   pixel_scale=255.0, target_name="class folder")


def describe_input(raw: RawData, *, normalisation: dict | None = None) -> dict:
    """What a client sends the trained model: shape, dtype, value range, layout, channels, and
    (given the schema's normalisation) what the model does with it inside."""
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
    if normalisation:
        preset = normalisation.get("preset", "dataset")
        stats = {"dataset": "the training split's mean/std", "none": "none (mean 0, std 1)",
                 "custom": "the configured mean/std",
                 "imagenet": f"ImageNet's mean/std scaled to raw pixels 0..{normalisation.get('pixel_scale', 1):g}"}
        info["normalisation"] = (f"inside the model: (x - mean) / std with {stats.get(preset, preset)}, "
                                 f"per {'channel' if raw.kind == 'image' else 'feature'}")
    return info
