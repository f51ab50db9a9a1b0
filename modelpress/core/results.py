"""Result types: what a step hands back, typed, and the one place their dictionaries are built.

Artifacts, meta.json files and results JSON keep plain dictionaries (KFP metadata, the
report, the local summary and retraining read them), so each type here renders to exactly
the dictionary those readers already know: `ModelCard.metadata`, `StepResult.as_dict`,
`Variant.as_dict`. `Role` is a str enum, so its members compare equal to the strings
stored in JSON by earlier runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Mapping

from modelpress.core.errors import ModelpressError


class Role(StrEnum):
    """What a benchmarked variant is there for; the values are the strings stored in results JSON
    (a StrEnum: str(), f-strings and json show the value, and members equal those strings)."""

    BASELINE = "baseline"  # torch eager fp32: its accuracy sets the bar, its latency the reference
    BASELINE_ONNX = "baseline-onnx"  # the plain ONNX export: the reference for ONNX-side ratios
    CANDIDATE = "candidate"  # may be selected and deployed
    CHAMPION = "champion"  # the deployed model, measured beside the others for the blessing rule


DETAIL_KEYS = ("source_spec", "versions")  # meta.json only: see ModelCard.detail
SCORE_KEYS = ("rmse", "mae", "r2")  # evaluation.REGRESSION_SCORES (core sits below evaluation)


@dataclass
class ModelCard:
    """What every model artifact's metadata says about its model, for later steps and the Vertex UI.

    `extra` holds the step's own keys (sparsity, opset, the ONNX `input` description, ...),
    rendered after the common ones. `detail` is written to meta.json beside an ONNX model
    but kept off the artifact's metadata: the torch spec and library versions are bulky
    there and no later step reads them from the artifact.
    """

    framework: str | None  # "pytorch" | "onnx" (None: a card read back from metadata without it)
    accuracy: float | None  # classification, on the dataset's test split; None when not scored or regression
    class_names: list | None
    task: str | None = None  # "classification" | "regression" (None: classification, as before tasks)
    scores: dict = field(default_factory=dict)  # regression: {"rmse", "mae", "r2"} on the test split
    architecture: str | None = None
    params: int | None = None
    flops: int | None = None  # forward FLOPs per example; MACs are half of them
    precision: str = "fp32"
    input_shape: list | None = None
    extra: dict = field(default_factory=dict)
    detail: dict = field(default_factory=dict)

    @property
    def macs(self) -> int | None:
        return None if self.flops is None else self.flops // 2

    def metadata(self) -> dict:
        """The artifact's metadata. Keys left unknown (None) are left out, `accuracy` excepted:
        a model that could not be scored says so with null."""
        common = {"framework": self.framework, "architecture": self.architecture, "params": self.params,
                  "macs": self.macs, "flops": self.flops, "accuracy": self.accuracy,
                  "precision": self.precision, "input_shape": self.input_shape, "class_names": self.class_names}
        out = {k: v for k, v in common.items() if v is not None or k == "accuracy"}
        if self.task:
            out["task"] = self.task
        return {**out, **self.scores, **self.extra}

    def quality(self) -> float | None:
        """The value the task is judged by (accuracy, or RMSE for regression); None if unscored."""
        if (self.task or "classification") == "classification":
            return self.accuracy
        return self.scores.get("rmse")

    def file_metadata(self) -> dict:
        """The card as meta.json holds it next to the model: the metadata plus `detail`."""
        return {**self.metadata(), **self.detail}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], detail_keys=DETAIL_KEYS) -> "ModelCard":
        """Read a card back from metadata or meta.json; keys it does not know go to `extra`."""
        known = {f.name for f in fields(cls)} - {"extra", "detail", "scores"}
        meta = dict(meta)
        scores = {k: meta.pop(k) for k in SCORE_KEYS if k in meta}
        flops = meta.pop("flops", None)
        macs = meta.pop("macs", None)
        args = {k: meta.pop(k) for k in list(meta) if k in known}
        detail = {k: meta.pop(k) for k in list(meta) if k in detail_keys}
        return cls(**{"framework": None, "accuracy": None, "class_names": None, **args}, scores=scores,
                   flops=flops if flops is not None else (None if macs is None else 2 * macs),
                   extra=meta, detail=detail)

    def evolve(self, *, drop=(), extra: Mapping | None = None, **changes) -> "ModelCard":
        """A copy with `changes`, the `extra` keys in `drop` removed and `extra` merged in."""
        kept = {k: v for k, v in self.extra.items() if k not in drop}
        return replace(self, **changes, extra={**kept, **(extra or {})})


@dataclass
class StepResult:
    """What a library step returns: the output model's card, numeric metrics, the test confusion
    matrix, and further keys for direct callers (a training history, pruning rounds).

    `metadata` is for steps that make no model (a benchmark), or keys beside the card.
    """

    card: ModelCard | None = None
    metrics: dict = field(default_factory=dict)
    confusion_matrix: list | None = None  # rows: true class, columns: predicted, in card.class_names order
    metadata: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """``{"metadata", "metrics"[, "confusion_matrix"], **extra}``, as `components._io.record` reads it."""
        out = {"metadata": {**(self.card.metadata() if self.card else {}), **self.metadata},
               "metrics": dict(self.metrics)}
        if self.confusion_matrix is not None:
            if self.card is None:
                raise ModelpressError("a confusion matrix needs a model card: its class names label the rows")
            out["confusion_matrix"] = {"class_names": self.card.class_names, "matrix": self.confusion_matrix}
        return {**out, **self.extra}


KINDS = ("torch", "onnx")


@dataclass
class Variant:
    """A model to benchmark: a torch model artifact or an ONNX one, in a role."""

    name: str
    path: str
    kind: str  # "torch" | "onnx"
    role: Role = Role.CANDIDATE
    metadata: dict | None = None  # the artifact's metadata, over its meta.json (quantisation settings)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ModelpressError(f"variant {self.name!r}: kind must be one of {list(KINDS)}, got {self.kind!r}")
        try:
            self.role = Role(self.role)
        except ValueError:
            raise ModelpressError(f"variant {self.name!r}: role must be one of {[r.value for r in Role]}, "
                                  f"got {self.role!r}") from None

    @classmethod
    def of(cls, value: "Variant | Mapping") -> "Variant":
        """A variant from itself or from its dictionary form ({name, path, kind[, role, metadata]})."""
        return value if isinstance(value, cls) else cls(**dict(value))

    def as_dict(self) -> dict:
        out = {"name": self.name, "path": self.path, "kind": self.kind, "role": self.role.value}
        return out if self.metadata is None else {**out, "metadata": self.metadata}


# ------------------------------------------------------------------------ skipped steps

SKIPPED_FILE = "skipped.json"  # an output folder holding only this: the step did not run


def write_skipped(out_dir, step: str, reason: str) -> dict:
    """Mark `out_dir` as the output of a step the recipe or the starting point left out, so
    the pipeline's graph stays the same for every recipe and later steps pass it over."""
    from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic

    note = {"skipped": True, "step": step, "reason": reason}
    with atomic_dir(local_path(out_dir)) as tmp:
        write_json_atomic(tmp / SKIPPED_FILE, note)
    return note


def skipped(path) -> dict | None:
    """The skip note of an output folder, or None when the step produced a real output."""
    from modelpress.core.fileio import local_path, read_json

    p = local_path(path) / SKIPPED_FILE
    return read_json(p) if p.exists() else None
