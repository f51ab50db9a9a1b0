"""Labels: which task a dataset is (classification or regression), checking every row's label,
and the regression splits.

``task: auto`` decides from the labels (the built-ins know their task):
  - any label that is not a number (``cat``, ``yes``) -> classification;
  - all labels numbers -> regression when there are more than ``AUTO_MIN_DISTINCT`` (20)
    distinct values and either some are not whole numbers (``3.7``) or the distinct values
    are at least ``AUTO_DISTINCT_SHARE`` (10%) of the rows (integer prices, scores);
  - otherwise classification (class ids such as 0..9, or 100 classes of 600 images each).
Missing labels (empty, NaN, inf) do not sway the decision; they are an error afterwards.
"""

from __future__ import annotations

import math

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.data.sources import BUILTIN_TASKS, RawData

TASKS = ("auto", "classification", "regression")
AUTO_MIN_DISTINCT = 20
AUTO_DISTINCT_SHARE = 0.10
TARGET_BINS = 10  # regression splits are stratified on this many target quantile bins
MIN_TARGET_STD = 1e-6


def check_task(task) -> str:
    if not isinstance(task, str) or task.strip().lower() not in TASKS:
        raise ModelpressError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return task.strip().lower()


def _number(label: str) -> float | None:
    try:
        return float(label)
    except (TypeError, ValueError):
        return None


def _parsed(raw: RawData) -> np.ndarray:
    """Every label as a float64: NaN where it is empty, not a number or not finite."""
    if raw.numeric_labels is not None:
        values = raw.numeric_labels.astype(np.float64)
    else:
        values = np.array([_number(v) if v.strip() else None for v in raw.labels.tolist()], dtype=object)
        values = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def _is_folder(raw: RawData) -> bool:
    return raw.kind == "image" and raw.numeric_labels is None and raw.line_numbers is None


def resolve_task(raw: RawData, task: str, log=print) -> str:
    """The task to build; for ``auto`` also log what was decided, why, and how to force the other."""
    name = raw.target_name or "label"
    if task != "auto":
        log(f"[make-dataset] task: {task} (as configured)")
        return task
    if raw.source in BUILTIN_TASKS:
        decided = BUILTIN_TASKS[raw.source]
        why = f"the built-in {raw.source} data is a {decided} dataset"
    elif _is_folder(raw):
        decided, why = "classification", "an image folder's sub-folders are its classes"
    else:
        values = _parsed(raw)
        known = values[~np.isnan(values)]
        names = [v for v, x in zip(raw.labels.tolist(), values.tolist())
                 if math.isnan(x) and v.strip() and _number(v) is None]
        distinct = len(np.unique(known))
        fractional = bool(np.any(known != np.round(known)))
        if names or not len(known):
            decided = "classification"
            why = (f"{name} holds names such as {names[0]!r}, not numbers" if names
                   else f"{name} holds no numbers")
        else:
            regression = distinct > AUTO_MIN_DISTINCT and (
                fractional or distinct >= AUTO_DISTINCT_SHARE * len(known))
            decided = "regression" if regression else "classification"
            why = (f"{name} holds numbers with {distinct} distinct values in {len(known)} rows"
                   + (", not all whole numbers" if fractional else ", all whole numbers"))
    other = "classification" if decided == "regression" else "regression"
    how = ("to treat each value as a class" if other == "classification"
           else "to predict the numbers themselves")
    log(f"[make-dataset] task: {decided} (auto: {why}); set task: {other} {how}")
    return decided


def _bad_rows_error(raw: RawData, bad: np.ndarray, problem: str, fix: str) -> ModelpressError:
    first = int(bad[0])
    label = raw.labels[first] if raw.numeric_labels is None else raw.numeric_labels[first]
    more = f" (and {len(bad) - 1} more row(s))" if len(bad) > 1 else ""
    name = raw.target_name or "label"
    return ModelpressError(f"{raw.where(first)}: {name} {str(label)!r} {problem}{more}; {fix}")


def check_class_labels(raw: RawData) -> None:
    """A class label may be any name, but not a missing one (empty, NaN, inf)."""
    text = np.char.strip(raw.labels.astype(str))
    missing = np.array([not t or (_number(t) is not None and not math.isfinite(_number(t)))
                        for t in text.tolist()], dtype=bool)
    if missing.any():
        raise _bad_rows_error(raw, np.flatnonzero(missing), "is missing",
                              "give every row its class or drop the row")


def regression_targets(raw: RawData) -> np.ndarray:
    """Every row's target as float32; an error naming the first row whose label is no finite number."""
    if _is_folder(raw):
        raise ModelpressError(f"{raw.source} is an image folder: its labels are class names. Regression "
                              "needs numeric targets: use a .npz with float 'y' or a .csv, or set "
                              "task: classification")
    if raw.numeric_labels is None and raw.source.lower().endswith(".npz"):
        raise ModelpressError(f"{raw.source}: 'y' holds {raw.labels.dtype} labels such as {raw.labels[0]!r}; "
                              "regression needs numbers. Save float targets as 'y' or set task: classification")
    values = _parsed(raw)
    bad = np.flatnonzero(np.isnan(values))
    if len(bad):
        label = str(raw.labels[bad[0]]).strip()
        problem = ("is empty" if not label else "is not a number" if _number(label) is None
                   else "is not finite")
        raise _bad_rows_error(raw, bad, problem, "regression targets must be finite numbers: fill in or "
                              "drop the row (or set task: classification if the labels are classes)")
    if np.ptp(values) == 0:
        raise ModelpressError(f"{raw.source}: every target is {values[0]:g}; regression needs targets that vary")
    return values.astype(np.float32)


def quantile_bins(y: np.ndarray, bins: int) -> np.ndarray:
    """Equal-count bins of the targets' ranks (ties broken by position), so each bin has members."""
    order = np.argsort(y, kind="stable")
    ranks = np.empty(len(y), dtype=np.int64)
    ranks[order] = np.arange(len(y))
    return ranks * bins // len(y)


def regression_split_indices(y: np.ndarray, *, val_fraction: float, test_fraction: float,
                             seed: int) -> dict[str, np.ndarray]:
    """Deterministic train/validation/test indices stratified on target quantile bins, so the
    splits see similar target distributions; unstratified when there are too few rows to bin."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    idx = np.arange(n)
    bins = min(TARGET_BINS, int(n * test_fraction), int(n * val_fraction), n // 4)
    strata = quantile_bins(y, bins) if bins >= 2 else None
    val_share = val_fraction / (1.0 - test_fraction)
    try:
        rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strata)
        train, val = train_test_split(rest, test_size=val_share, random_state=seed,
                                      stratify=None if strata is None else strata[rest])
    except ValueError:
        if strata is None:
            raise
        rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed)
        train, val = train_test_split(rest, test_size=val_share, random_state=seed)
    return {"train": np.sort(train), "validation": np.sort(val), "test": np.sort(test)}


def target_stats(name: str, y_train: np.ndarray) -> dict:
    """schema["target"]: the training split's target statistics (std floored like the features')."""
    std = float(y_train.std())
    return {"name": name, "mean": float(y_train.mean()), "std": std if std >= MIN_TARGET_STD else 1.0,
            "min": float(y_train.min()), "max": float(y_train.max())}
