"""What a classifier's logits mean to a client: class names, probabilities, top-k classes, and
what to send, from the version's meta.json.

meta.json (written by the deploy step beside model.onnx) may hold `class_names` (one string
per logit) and an `input` block describing the input (name, datatype, shape, layout,
channels, value_range, preprocessing); every key is optional and older versions have
neither. Derived outputs, on top of the model's own:
- `probabilities` FP32 [batch, classes]: the softmax of the logits. Asked for with the
  request parameter `"probabilities": true` (or by name in `outputs`).
- `label` BYTES [batch]: the predicted class name per row. Sent when asked for by name, and
  when the request names no outputs and the version has class names. A request that names
  its outputs gets exactly those, so `outputs=["logits"]` clients see no change.
- Triton's classification extension: `"outputs": [{"name": "logits", "parameters":
  {"classification": k}}]` answers that output as BYTES [batch, k] of "value:index[:label]",
  highest value first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.export.runtime import META_FILE
from modelpress.serving.errors import ClientError, ServerError
from modelpress.serving.protocol import bytes_array

SCORES = "logits"           # the output the derived ones come from (or the model's only output)
PROBABILITIES, LABEL = "probabilities", "label"
DERIVED_HELP = {
    PROBABILITIES: "FP32 [batch, classes]: softmax of the logits; ask with parameters.probabilities=true",
    LABEL: "BYTES [batch]: the predicted class name per row; sent unless the request names other outputs",
}


@dataclass(frozen=True)
class ModelInfo:
    """The version's meta.json, as far as serving is concerned."""
    class_names: tuple[str, ...] = ()
    input: dict = field(default_factory=dict)
    task: str = "classification"  # regression: the output is the value itself, nothing is derived

    @classmethod
    def read(cls, folder: Path) -> "ModelInfo":
        path = folder / META_FILE
        if not path.exists():
            return cls()
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelpressError(f"{path} is not readable JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ModelpressError(f"{path} must hold a JSON object")
        names = doc.get("class_names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelpressError(f"{path}: class_names must be a list of strings, got {names!r}")
        block = doc.get("input") or {}
        if not isinstance(block, dict):
            raise ModelpressError(f"{path}: 'input' must be an object describing what to send, got {block!r}")
        task = doc.get("task") or "classification"
        return cls(tuple(names), block, task)


def scores_output(mv) -> str | None:
    """The [batch, classes] output the derived outputs come from, or None."""
    names = [t.name for t in mv.outputs]
    name = SCORES if SCORES in names else names[0] if len(names) == 1 else None
    if name is None:
        return None
    spec = next(t for t in mv.outputs if t.name == name)
    rank = len(spec.dims) + (1 if mv.policy.max_batch_size > 0 else 0)
    return name if rank == 2 else None


def check_info(mv) -> None:
    """At load: class names that cannot match the scores output are a deploy mistake."""
    name, n = scores_output(mv), len(mv.info.class_names)
    if not n or name is None:
        return
    classes = next(t for t in mv.outputs if t.name == name).dims[-1]
    if classes != -1 and classes != n:
        raise ModelpressError(f"meta.json lists {n} class_names but output {name!r} has {classes} classes")


def derived(mv) -> set[str]:
    """Derived outputs this version can add (a model output of the same name wins)."""
    if mv.info.task == "regression" or scores_output(mv) is None:
        return set()
    names = {PROBABILITIES} | ({LABEL} if mv.info.class_names else set())
    return names - {t.name for t in mv.outputs}


def metadata_parameters(mv) -> dict:
    """What to send and what comes back, for GET /v2/models/<m>. KServe v2 defines no
    `parameters` in model metadata; MLServer adds one the same way, and tritonclient.http
    returns the JSON as parsed, so clients read it or ignore it."""
    out = {}
    if mv.info.input:
        out["input"] = mv.info.input
    if mv.info.class_names:
        out["class_names"] = list(mv.info.class_names)
    out["task"] = mv.info.task
    extra = derived(mv)
    if extra:
        out["derived_outputs"] = {n: DERIVED_HELP[n] for n in sorted(extra)}
    return out


def input_parameters(mv, name: str) -> dict | None:
    """The input block's descriptive keys for the input it describes (or the only input)."""
    block = mv.info.input
    target = block.get("name") or (mv.inputs[0].name if len(mv.inputs) == 1 else None)
    if not block or target != name:
        return None
    rest = {k: v for k, v in block.items() if k not in ("name", "datatype", "shape")}
    return rest or None


def wants_probabilities(params: dict) -> bool:
    flag = params.get("probabilities", False)
    if not isinstance(flag, bool):
        raise ClientError(f"parameters.probabilities must be true or false, got {flag!r}")
    return flag


@dataclass
class Plan:
    names: list[str]                 # response outputs, in order
    model_outputs: list[str]         # what the model must produce for them
    classification: dict[str, int]


def plan(mv, outputs: list[str] | None, classification: dict[str, int], params: dict) -> Plan:
    """Validate what the request asks for (a 4xx before any compute) and what to run."""
    model = [t.name for t in mv.outputs]
    extra, scores = derived(mv), scores_output(mv)
    probabilities = wants_probabilities(params)
    if outputs is None:
        names = model + ([LABEL] if LABEL in extra else [])
    else:
        names = list(outputs)
        for name in names:
            if name in (PROBABILITIES, LABEL) and name not in model and name not in extra:
                raise ClientError(_unavailable(mv, name))
            if name not in model and name not in extra:
                raise ClientError(f"model {mv.name} has no output {name!r}; outputs: {sorted(model)}"
                                  + (f", and derived: {sorted(extra)}" if extra else ""))
    if probabilities and PROBABILITIES not in names:
        if PROBABILITIES not in extra and PROBABILITIES not in model:
            raise ClientError(_unavailable(mv, PROBABILITIES))
        names.append(PROBABILITIES)
    for name in classification:
        if name not in model:
            raise ClientError(f"classification applies to the model's outputs {sorted(model)}, not {name!r}")
    needed = [n for n in names if n in model]
    if scores and scores not in needed and any(n in extra for n in names):
        needed.append(scores)
    return Plan(names, needed, dict(classification))


def _unavailable(mv, name: str) -> str:
    if mv.info.task == "regression":
        return (f"model {mv.name} is a regression model: its output is the predicted value itself, so there is "
                f"no {name!r}; ask for {sorted(t.name for t in mv.outputs)}")
    if name == LABEL and scores_output(mv) is not None:
        return (f"model {mv.name} version {mv.version} has no class names (meta.json class_names), so no "
                f"'{LABEL}' output; ask for {SCORES!r} or {PROBABILITIES!r}")
    return (f"model {mv.name} has no [batch, classes] output named {SCORES!r} (nor a single output), so no "
            f"{name!r}; outputs: {sorted(t.name for t in mv.outputs)}")


def apply(mv, p: Plan, result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The response tensors, in the order the plan lists them."""
    scores = scores_output(mv)
    out = {}
    for name in p.names:
        if name in p.classification:
            out[name] = top_classes(result[name], p.classification[name], mv.info.class_names)
        elif name == PROBABILITIES and name not in result:
            out[name] = softmax(result[scores])
        elif name == LABEL and name not in result:
            out[name] = labels(mv, result[scores])
        else:
            out[name] = result[name]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # shifted: no overflow for large logits
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def labels(mv, logits: np.ndarray) -> np.ndarray:
    names = mv.info.class_names
    if logits.shape[-1] != len(names):  # only possible when the class dimension is dynamic
        raise ServerError(f"model {mv.name} version {mv.version} answered {logits.shape[-1]} classes but its "
                          f"meta.json lists {len(names)} class_names")
    return bytes_array([names[i] for i in logits.argmax(axis=-1).reshape(-1)], logits.shape[:-1])


def top_classes(values: np.ndarray, k: int, class_names: tuple[str, ...]) -> np.ndarray:
    """Triton's classification strings: "value:index[:label]", the k highest first."""
    rows = values.reshape(len(values), -1)
    k = min(k, rows.shape[1])  # Triton clamps to the number of classes too
    integer = rows.dtype.kind in "iub"
    strings = []
    for row in rows:
        for i in np.argsort(-row.astype(np.float64), kind="stable")[:k]:
            value = str(int(row[i])) if integer else f"{float(row[i]):f}"
            label = f":{class_names[i]}" if i < len(class_names) else ""
            strings.append(f"{value}:{i}{label}")
    return bytes_array(strings, (len(rows), k))


def predictions(mv, merged: dict[str, np.ndarray], params: dict) -> list:
    """Vertex predictions: one per instance. With a single thing to say (one output, no class
    names, no probabilities asked) a prediction is that output's values, as before; otherwise
    an object keyed by output name, with `label` and `probabilities` beside the logits."""
    extra, scores = derived(mv), scores_output(mv)
    if LABEL in extra:
        merged = {**merged, LABEL: labels(mv, merged[scores])}
    if wants_probabilities(params):
        if PROBABILITIES not in extra:
            raise ClientError(_unavailable(mv, PROBABILITIES))
        merged = {**merged, PROBABILITIES: softmax(merged[scores])}
    rows = len(next(iter(merged.values())))
    columns = {k: [v.decode() if isinstance(v, bytes) else v for v in a.tolist()] for k, a in merged.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [{k: v[i] for k, v in columns.items()} for i in range(rows)]
