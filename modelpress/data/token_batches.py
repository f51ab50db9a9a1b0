"""Token batches: the int64 arrays a text classifier takes, cut to each batch's longest row.

Shared by training, scoring, calibration and benchmarking, so that every step feeds a model
the same way: rows are padded at their end, and the columns past a batch's longest real row
are padding that only costs time (attention is quadratic in it) and changes no logit.
"""

from __future__ import annotations

import numpy as np

from modelpress.core.errors import ModelpressError

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def token_arrays(data, where: str) -> dict[str, np.ndarray]:
    """The token arrays of a TextSplit, or of a dict holding them, as int64 (N, L)."""
    if hasattr(data, "inputs") and callable(data.inputs):
        data = data.inputs()
    if not isinstance(data, dict) or "input_ids" not in data:
        raise ModelpressError(f"{where} must be a text split (modelpress.data.text.load_text_dataset(...).train) "
                              "or a dict of its token arrays (split.inputs()): input_ids, attention_mask, "
                              f"token_type_ids; got {type(data).__name__}")
    out = {k: np.asarray(data[k], dtype=np.int64) for k in TOKEN_INPUTS if k in data}
    ids = out["input_ids"]
    if ids.ndim != 2 or len(ids) == 0:
        raise ModelpressError(f"{where}: input_ids must be a non-empty (rows, length) array; got shape "
                              f"{list(ids.shape)}")
    for k, v in out.items():
        if v.shape != ids.shape:
            raise ModelpressError(f"{where}: {k} has shape {list(v.shape)}, input_ids {list(ids.shape)}; they "
                                  "must come from the same split")
    out.setdefault("attention_mask", np.ones_like(ids))
    out.setdefault("token_type_ids", np.zeros_like(ids))
    return out


def labels_of(data, rows: int, where: str) -> np.ndarray:
    """The int64 class labels of a text split (its ``y``, or a dict's ``"y"``), one per row."""
    y = getattr(data, "y", None)
    if y is None and isinstance(data, dict):
        y = data.get("y")
    if y is None:
        raise ModelpressError(f"{where} has no labels: pass a text split (load_text_dataset(...).train) or a "
                              "dict with its token arrays and 'y'")
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (rows,):
        raise ModelpressError(f"{where} has {rows} rows of tokens but labels of shape {list(y.shape)}")
    return y


def trim_batch(arrays: dict[str, np.ndarray], rows, names) -> dict[str, np.ndarray]:
    """``rows`` of the arrays, cut to the longest of them (see the module docstring)."""
    rows = np.asarray(rows)
    width = max(1, int(arrays["attention_mask"][rows].sum(axis=1).max()))
    return {n: np.ascontiguousarray(arrays[n][rows, :width]) for n in names}


def batches(arrays: dict[str, np.ndarray], names, batch_size: int):
    """Consecutive trimmed batches over every row, in order."""
    n = len(arrays["input_ids"])
    for i in range(0, n, batch_size):
        yield trim_batch(arrays, np.arange(i, min(n, i + batch_size)), names)
