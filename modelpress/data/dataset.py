"""Datasets: load a source, split it, write and read the dataset artifact.

A source is one of
  - ``digits``: scikit-learn's bundled 8x8 handwritten digits (optionally resized; classification);
  - ``diabetes``: scikit-learn's bundled diabetes progression data (10 features; regression);
  - a ``.csv`` file with numeric feature columns and a label column;
  - a ``.npz`` file with arrays ``x`` (features) and ``y`` (labels or targets);
  - a directory of images, one sub-folder per class.
Paths may be local or ``gs://`` (read through the /gcs/ mount on Vertex).

The dataset artifact is a directory holding ``train.npz``, ``validation.npz`` and
``test.npz`` (arrays ``x`` float32 raw features, exactly what a client would send, and
``y``: int64 class indices, or float32 targets for regression) plus ``schema.json``. Every
scorer reads the same ``test.npz``, so models are compared on the same examples.
Classification splits are stratified by class, regression splits by target quantile bins.
The normalisation statistics (the training split's mean/std, a preset such as ImageNet's, or
the user's own) go into the schema, and from there into the model itself
(``models.InputNormalised``), so exported and served models take raw features too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, read_json, write_json_atomic
from modelpress.data.preprocessing import check_channels, convert_channels, normalisation, parse_normalise
from modelpress.data.sources import RawData, describe_input, load_source
from modelpress.data.targets import (check_class_labels, check_task, regression_split_indices, regression_targets,
                                     resolve_task, target_stats)

SPLITS = ("train", "validation", "test")
SCHEMA_VERSION = 2  # 2: splits hold raw features; the model normalises


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
        """The classes in output order; [] for regression."""
        return list(self.schema.get("class_names") or [])

    @property
    def task(self) -> str:
        """classification (y: int64 class indices) or regression (y: float32 targets)."""
        return self.schema.get("task", "classification")

    @property
    def num_outputs(self) -> int:
        """The model's output width: one logit per class, or one value for regression."""
        return 1 if self.task == "regression" else len(self.class_names)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.schema["feature_shape"])


# ------------------------------------------------------------------------------ splits

def _class_order(labels: np.ndarray) -> list[str]:
    uniq = sorted(set(labels.tolist()))
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return uniq


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ModelpressError(f"{name} must be between 0 and 1 (exclusive), got {frac}")
    if val_fraction + test_fraction >= 0.9:
        raise ModelpressError(f"val_fraction + test_fraction = {val_fraction + test_fraction:.2f} "
                              "leaves under 10% for training; lower them")


def split_indices(y: np.ndarray, *, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, np.ndarray]:
    """Deterministic stratified train/validation/test indices."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed)
    return {"train": np.sort(train), "validation": np.sort(val), "test": np.sort(test)}


def _classification(raw: RawData, source: str, *, val_fraction: float, test_fraction: float,
                    seed: int) -> tuple[np.ndarray, dict, dict]:
    """Class indices (int64), stratified split indices and the class part of the schema."""
    check_class_labels(raw)
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
        raise ModelpressError(f"cannot make stratified splits of {len(y)} examples in {len(classes)} "
                              f"classes with val_fraction {val_fraction} and test_fraction "
                              f"{test_fraction} ({exc}); raise the fractions or add examples") from None
    return y, parts, {"class_names": classes, "num_classes": len(classes), "num_outputs": len(classes),
                      "class_counts": counts}


def _regression(raw: RawData, source: str, *, val_fraction: float, test_fraction: float,
                seed: int) -> tuple[np.ndarray, dict, dict]:
    """float32 targets, target-stratified split indices and the target part of the schema."""
    y = regression_targets(raw)
    try:
        parts = regression_split_indices(y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    except ValueError as exc:  # sklearn: too few rows for three non-empty splits
        raise ModelpressError(f"cannot split {len(y)} examples with val_fraction {val_fraction} and "
                              f"test_fraction {test_fraction} ({exc}); add examples") from None
    target = target_stats(raw.target_name or "target", y[parts["train"]])
    return y, parts, {"class_names": [], "num_classes": 0, "num_outputs": 1, "class_counts": {},
                      "target": target}


def make_dataset(source: str, out_dir: str, *, label_column: str = "label", image_size: int = 0,
                 channels: int = 0, normalise: str | dict = "dataset", task: str = "auto",
                 val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0,
                 text_column: str = "", tokenizer: str = "", vocab_size: int = 8000, max_length: int = 128,
                 log: Callable[[str], None] = print) -> dict:
    """Load `source`, split it and write the dataset artifact to `out_dir`. Returns the schema.

    With `text_column` set, `source` is a CSV/JSONL of texts: see `data.text.make_text_dataset`
    (`tokenizer`, `vocab_size`, `max_length` apply there; image and table settings do not).

    `task`: auto | classification | regression (auto decides from the labels and logs why).
    `channels`: 0 keeps the data's, 3 repeats grey into RGB, 1 turns RGB grey (luma).
    `normalise`: dataset | imagenet | none | {"mean": [...], "std": [...]} (raw units, one per
    channel or feature): the statistics the model applies to raw input inside its graph.
    """
    check_fractions(val_fraction, test_fraction)
    task = check_task(task)
    if text_column:
        from modelpress.data.text import make_text_dataset

        if task == "regression":
            raise ModelpressError("text datasets are classification datasets: set task to auto or classification")
        return make_text_dataset(source, out_dir, text_column=text_column, label_column=label_column,
                                 tokenizer=tokenizer, vocab_size=vocab_size, max_length=max_length,
                                 val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, log=log)
    channels = check_channels(channels)
    normalise = parse_normalise(normalise)
    raw = load_source(source, label_column=label_column, image_size=image_size)
    if len(raw.labels) == 0:
        raise ModelpressError(f"dataset {source} is empty")
    raw = convert_channels(raw, channels, log)
    task = resolve_task(raw, task, log)
    build = _regression if task == "regression" else _classification
    y, parts, labels = build(raw, source, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)

    # Normalisation statistics come from the training split only. The stored features stay
    # raw: the statistics travel in the schema and the model applies them (models.py).
    norm = normalisation(raw, raw.x[parts["train"]], normalise, log)
    if task == "regression":  # the model learns standardised targets and answers in target units
        norm["target"] = {"mean": labels["target"]["mean"], "std": labels["target"]["std"]}
    x = raw.x.astype(np.float32)

    schema = {
        "format_version": SCHEMA_VERSION,
        "task": task,
        "input_kind": raw.kind,
        "feature_shape": list(raw.x.shape[1:]),
        "dtype": "float32",
        **labels,
        "normalisation": norm,
        "preprocessing": {"normalise": norm["preset"],
                          "channels": int(raw.x.shape[1]) if raw.kind == "image" else None,
                          "image_size": image_size or None},
        "input": describe_input(raw, normalisation=norm),
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


def read_schema(path: str, *, text: bool | None = None) -> dict:
    """A dataset artifact's schema.json, checked to be of this format (and, with `text`, of that kind)."""
    schema_path = local_path(path) / "schema.json"
    if not schema_path.exists():
        raise ModelpressError(f"{path} is not a dataset artifact: schema.json is missing. "
                              "Create one with the dataset step (modelpress.data.make_dataset).")
    schema = read_json(schema_path)
    is_text = schema.get("input_kind") == "text"
    if text is not None and text != is_text:
        raise ModelpressError(f"{path} is a text dataset: read it with modelpress.data.text.load_text_dataset"
                              if is_text else f"{path} is a {schema.get('input_kind')} dataset, not a text one; "
                              "read it with modelpress.data.load_dataset")
    if schema.get("format_version") != SCHEMA_VERSION:
        raise ModelpressError(f"{path} is a dataset artifact of format {schema.get('format_version')}, "
                              f"this modelpress reads format {SCHEMA_VERSION} (raw features; the model "
                              "normalises). Make it again: rerun the pipeline with --no-cache.")
    return schema


LINEAGE_KEYS = ("source", "task", "splits", "fractions", "seed", "preprocessing", "label_column")


def lineage(schema: dict) -> dict:
    """What a model records of the data it learnt from (its card names it): source, splits and their
    sizes, seed, preprocessing; the dataset's schema.json is the whole story."""
    return {k: schema[k] for k in LINEAGE_KEYS if schema.get(k) is not None}


def dataset_task(path: str) -> str:
    """The task of a dataset artifact (any kind, text included) from its schema alone."""
    return read_schema(path).get("task", "classification")


def load_dataset(path: str) -> Dataset:
    root = local_path(path)
    schema = read_schema(path, text=False)
    splits = {}
    for name in SPLITS:
        with np.load(root / f"{name}.npz", allow_pickle=False) as a:
            splits[name] = Split(x=a["x"], y=a["y"])
    return Dataset(train=splits["train"], validation=splits["validation"], test=splits["test"],
                   schema=schema)
