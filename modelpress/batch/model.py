"""The model a batch job scores with, and what it answers.

It is the deployed champion of a Triton-layout repository (the newest version the repository's
version policy serves, which is what `modelpress serve` answers with when a request names no
version), a given version, or any ONNX model artifact folder (model.onnx + meta.json). Its input
is described by meta.json's `input` block and the graph; its outputs become prediction rows by
the server's rules (`serving.postprocess`), so a batch prediction equals the online answer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.deploy import repository as repo
from modelpress.export import runtime
from modelpress.serving import postprocess
from modelpress.serving.textmodel import is_text_version

KINDS = ("tabular", "image", "text")


def resolve_model(*, repository: str = "", model_name: str = "", version: int = 0, onnx_model: str = "") -> Path:
    """The folder holding model.onnx: `onnx_model` when given, else `version` of `model_name` in
    `repository` (0: the champion, the newest version the config's version policy serves)."""
    from modelpress.serving.store import select_versions  # the server's own choice of versions

    if onnx_model:
        path = runtime.onnx_file(onnx_model)  # a folder or the file itself; a clear error when absent
        return path.parent
    if not repository or not model_name:
        raise ModelpressError("no model to score with: set repository and model_name (the deployed champion, or "
                              "version N), or onnx_model (an ONNX model folder: model.onnx + meta.json)")
    available = repo.versions(repository, model_name)
    if not available:
        raise ModelpressError(f"model {model_name!r} has no deployed version in {repository}: deploy one first "
                              "(the optimise pipeline's deploy step), or set onnx_model to an ONNX model folder")
    if version < 0:
        raise ModelpressError(f"version must be 0 (the deployed champion) or a version number, got {version}")
    if version:
        if version not in available:
            raise ModelpressError(f"model {model_name!r} has no version {version} in {repository}; deployed "
                                  f"versions: {available} (or set version 0 for the champion)")
        chosen = version
    else:
        served = select_versions(repo.read_config(repository, model_name), available)
        if not served:
            raise ModelpressError(f"the version policy in {repository}/{model_name}/{repo.CONFIG_FILE} serves none "
                                  f"of the deployed versions {available}; set version to one of them")
        chosen = max(served)
    return local_path(repository) / model_name / str(chosen)


@dataclass(frozen=True)
class InputSpec:
    """What one instance is for this model."""
    kind: str                       # tabular, image or text
    shape: tuple[int, ...] = ()     # per instance, without the batch dimension: (features,) or (C, H, W)
    feature_names: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None  # the training data's, from meta.json

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class BatchModel:
    """One model's ONNX Runtime session, its input description and its output rules.

    `name`, `version` and `info` are what `serving.postprocess` reads of a served version, so class
    names come from the very function the server answers `label` with."""

    def __init__(self, folder: str | os.PathLike, threads: int = 0):
        self.folder = Path(folder)
        self.info = postprocess.ModelInfo.read(self.folder)
        self.meta = runtime.read_meta(self.folder)
        self.name = self.folder.parent.name if self.folder.name.isdigit() else self.folder.name
        self.version = int(self.folder.name) if self.folder.name.isdigit() else 0
        self.threads = threads or len(os.sched_getaffinity(0))  # 0: every core this process may use
        self.session = runtime.session(self.folder, threads=self.threads)
        inputs, outputs = self.session.get_inputs(), [o.name for o in self.session.get_outputs()]
        self.output = postprocess.SCORES if postprocess.SCORES in outputs else outputs[0]
        self.tokeniser = None
        if is_text_version(self.folder, self.info):
            from modelpress.serving.text import TextTokeniser  # the server's tokeniser: the same ids

            self.tokeniser = TextTokeniser(self.folder, input_names=[i.name for i in inputs])
            self.spec = InputSpec("text")
            return
        if len(inputs) != 1:
            raise ModelpressError(f"{self.folder}: the model takes {len(inputs)} inputs "
                                  f"({[i.name for i in inputs]}); batch prediction feeds one input (or texts)")
        if inputs[0].type != "tensor(float)":
            raise ModelpressError(f"{self.folder}: input {inputs[0].name!r} is {inputs[0].type}; batch prediction "
                                  "feeds float32 features or images (or texts to a model with a tokenizer/)")
        self.input_name = inputs[0].name
        self.spec = self._numeric_spec(inputs[0].shape[1:])

    def _numeric_spec(self, graph_dims) -> InputSpec:
        block = self.info.input
        shape = block.get("shape") or []
        dims = []
        for i, d in enumerate(graph_dims):
            described = shape[i + 1] if len(shape) == len(graph_dims) + 1 else None
            d = d if isinstance(d, int) and d > 0 else described
            if not isinstance(d, int) or d <= 0:
                raise ModelpressError(f"{self.folder}: the model's input dimension {i + 1} is not fixed "
                                      f"({graph_dims}) and meta.json's input.shape does not give it")
            dims.append(d)
        kind = "image" if len(dims) == 3 else "tabular"
        if len(dims) not in (1, 3):
            raise ModelpressError(f"{self.folder}: input shape {dims} per instance; batch prediction feeds rows of "
                                  "features (F,) or images (C, H, W)")
        if kind == "image" and block.get("layout", "NCHW") != "NCHW":
            raise ModelpressError(f"{self.folder}: meta.json says layout {block['layout']}; batch prediction "
                                  "decodes images as NCHW (what modelpress exports)")
        if kind == "image" and dims[0] not in (1, 3):
            raise ModelpressError(f"{self.folder}: the model takes {dims[0]}-channel images; batch prediction "
                                  "decodes grey (1) or RGB (3) images")
        names = tuple(block.get("feature_names") or ())
        if names and len(names) != math.prod(dims):
            raise ModelpressError(f"{self.folder}: meta.json names {len(names)} features but the model takes "
                                  f"{math.prod(dims)}")
        bounds = block.get("value_range")
        value_range = (float(bounds[0]), float(bounds[1])) if isinstance(bounds, list) and len(bounds) == 2 else None
        return InputSpec(kind, tuple(dims), names, value_range)

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.info.class_names

    def describe(self) -> str:
        what = {"text": "texts", "image": f"images {list(self.spec.shape)}",
                "tabular": f"{self.spec.size} features"}[self.spec.kind]
        where = f"{self.name} version {self.version}" if self.version else str(self.folder)
        return f"{where} ({self.task}, {what}, {self.threads} thread(s))"

    # -- scoring ------------------------------------------------------------------------------
    def run(self, batch) -> np.ndarray:
        """The scores output for a batch: float32 instances, or texts for a text model."""
        if self.tokeniser is not None:
            feed, _ = self.tokeniser.encode(batch)  # padded to this batch's longest text, cut at max_length
        else:
            feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([self.output], feed)[0]

    def predictions(self, outputs: np.ndarray) -> tuple[list, np.ndarray | None]:
        """(prediction per row, scores per row or None): the class name (the server's `label`) or the
        class index without class names, and the logits; regression: the value itself, no scores."""
        if self.task == "regression" or outputs.ndim != 2:
            values = outputs.reshape(len(outputs), -1)
            return (values[:, 0].tolist() if values.shape[1] == 1 else values.tolist()), None
        if self.class_names:
            return [b.decode() for b in postprocess.labels(self, outputs).tolist()], outputs
        return outputs.argmax(axis=1).tolist(), outputs

    def score_columns(self, classes: int) -> list[str]:
        """The CSV columns of the scores: score_<class name> (score_<index> without names)."""
        names = self.class_names if len(self.class_names) == classes else [str(i) for i in range(classes)]
        return [f"score_{n}" for n in names]
