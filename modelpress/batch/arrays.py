"""Instances that are arrays: an image folder (decoded like the training data) and an NPZ file.

Images are decoded, resized and given the model's channels by the data step's own functions
(`data.sources.decode_image`, `image_array`; `data.preprocessing.channel_images`), so a file
scores as it would have trained: grey stays grey and RGB stays RGB, resized bilinearly to the
model's height and width, then grey repeated into RGB or RGB turned grey (ITU-R 601 luma) when
the model takes the other. Pixels stay raw (0..255 for 8-bit files): the model normalises
inside its graph, exactly as the server receives them.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from modelpress.batch.model import InputSpec
from modelpress.batch.sources import Chunk, Record
from modelpress.core.errors import ModelpressError
from modelpress.data.preprocessing import channel_images
from modelpress.data.sources import IMAGE_SUFFIXES, decode_image, image_array, resize_images


def image_folder(source, spec: InputSpec) -> Iterator[Record]:
    """Every image under the folder (any depth: flat, or one sub-folder per class), by relative
    path; the key is that path."""
    root = source.path
    if spec.kind != "image":
        raise ModelpressError(f"{source.location} is a folder of images, but the model takes {spec.kind} input "
                              f"of shape {list(spec.shape)}; give a .csv, .jsonl or .npz file")
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise ModelpressError(f"{source.location} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                              "at any depth")
    source.total = len(files)
    source.key_name = source.settings.key_column or "path"
    return _images(root, files, spec)


def _images(root, files, spec: InputSpec) -> Iterator[Record]:
    channels, size = spec.shape[0], spec.shape[1:]
    for row, file in enumerate(files):
        key = file.relative_to(root).as_posix()
        try:
            image = image_array(decode_image(file), rgb=channels == 3, size=size)
        except ModelpressError as exc:
            yield Record(row, key, reason=str(exc), raw=key)
            continue
        if image.shape[0] != channels:  # an RGB file for a grey model: luma, as channels: 1 trains
            image = channel_images(image[None], channels)[0]
        yield Record(row, key, value=image)


def npz_chunks(source, spec: InputSpec):
    """The NPZ's `x` (loaded whole: an .npz member cannot be memory-mapped), scored a chunk at a time;
    `key_column` names another array of the file holding one key per row."""
    location, key_column = source.location, source.settings.key_column
    try:
        with np.load(source.path, allow_pickle=False) as arrays:
            if "x" not in arrays.files:
                raise ModelpressError(f"{location} has no array 'x' (it has {arrays.files}); save the instances "
                                      "as numpy.savez(path, x=instances)")
            x = arrays["x"]
            keys = arrays[key_column] if key_column and key_column in arrays.files else None
            if key_column and keys is None:
                raise ModelpressError(f"key_column {key_column!r} is not an array of {location} (it has "
                                      f"{arrays.files})")
    except ModelpressError:
        raise
    except Exception as exc:
        raise ModelpressError(f"{location} is not a readable .npz file ({exc}); write it with "
                              "numpy.savez(path, x=instances)") from None
    return array_chunks(source, spec, x, keys)


def builtin_chunks(source, spec: InputSpec):
    """A built-in dataset's every example ('digits', 'diabetes'), raw as the data step reads it."""
    from modelpress.data.sources import load_source

    if source.settings.key_column:
        raise ModelpressError(f"key_column applies to files; the built-in {source.location!r} is keyed by row")
    return array_chunks(source, spec, load_source(source.location).x, None)


def array_chunks(source, spec: InputSpec, x: np.ndarray, keys: np.ndarray | None):
    """Chunks of an array of instances: images resized and given the model's channels, bad rows out."""
    location, key_column = source.location, source.settings.key_column
    if x.dtype.kind not in "iuf":
        raise ModelpressError(f"{location}: 'x' has dtype {x.dtype}; instances must be real numbers")
    if spec.kind == "image" and x.ndim == 3:
        x = x[:, None]  # (N, H, W): grey images
    fits = (x.ndim == 2 and x.shape[1] == spec.size) if spec.kind == "tabular" else (
        x.ndim == 4 and x.shape[1] in (1, 3))
    if not fits:
        wants = (f"rows of {spec.size} features" if spec.kind == "tabular" else
                 f"images (N, H, W) or (N, C, H, W) with 1 or 3 channels, scored at {list(spec.shape)}")
        raise ModelpressError(f"{location}: 'x' has shape {list(x.shape)}; the model takes {wants}")
    if keys is not None and (keys.ndim != 1 or len(keys) != len(x)):
        raise ModelpressError(f"{location}: key array {key_column!r} has shape {list(keys.shape)}; it needs one key "
                              f"per row of 'x' ({len(x)})")
    source.total = len(x)

    def chunks(chunk_rows: int) -> Iterator[Chunk]:
        for start in range(0, len(x), chunk_rows):
            part = x[start:start + chunk_rows].astype(np.float32)
            rows = range(start, start + len(part))
            chunk_keys = keys[start:start + len(part)].tolist() if keys is not None else list(rows)
            bad = ~np.isfinite(part.reshape(len(part), -1)).all(axis=1)
            errors = [Record(r, k, reason="holds NaN or infinite values; remove or impute them first",
                             raw=_preview(part[i], r)) for i, (r, k) in enumerate(zip(rows, chunk_keys)) if bad[i]]
            good = part[~bad]
            if spec.kind == "image":
                if good.shape[2:] != spec.shape[1:]:
                    good = resize_images(good, tuple(spec.shape[1:]))  # as the data step resizes an NPZ
                good = channel_images(good, spec.shape[0])
            yield Chunk(keys=[k for i, k in enumerate(chunk_keys) if not bad[i]],
                        rows=[r for i, r in enumerate(rows) if not bad[i]],
                        inputs=np.ascontiguousarray(good.reshape(len(good), *spec.shape)), errors=errors,
                        read=len(part))

    return chunks


def _preview(row: np.ndarray, index: int):
    """A bad NPZ row for the errors file: a table row's values, an image's place and shape."""
    if row.ndim == 1:
        return [float(v) if np.isfinite(v) else str(v) for v in row.tolist()]
    return {"array": "x", "index": index, "shape": list(row.shape)}
