"""Model cards: what a deployed version is, how it was made, how good and fast it is, why it was chosen.

Every version a deploy writes carries ``model_card.json`` and ``model_card.md``. The JSON follows
the field names of Google's Model Card Toolkit schema (v0.0.2: ``model_details``,
``model_parameters``, ``quantitative_analysis``, ``considerations``) where they fit, and adds
what modelpress knows beyond it: ``model_parameters.lineage`` (each step and its settings),
``quantitative_analysis.speed``/``size``/``machine`` and ``blessing``.

Nothing is measured here: the card reads what the steps recorded. meta.json (the ONNX
artifact's card, with ``source_spec``: the torch spec whose ``info`` holds the dataset, the
start, the train, prune and distil settings), and the select step's decision.json in the
chosen folder (the decision, the blessing, the champion; and the benchmark row and machine
when the select step records them). What no step recorded is said to be unrecorded, never guessed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, read_json, write_json_atomic, write_text_atomic
from modelpress.export import runtime

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
DECISION_FILE = "decision.json"  # written by the select step beside the chosen model
SCHEMA_VERSION = "0.0.2"  # the Model Card Toolkit schema whose field names this follows
FILL = "TO FILL IN"  # the marker of a field only the model's owner can write
UNRECORDED = "not recorded"
_USER_FIELDS = {  # considerations the owner writes; Model Card Toolkit names, with what each asks
    "users": "who is meant to use the model",
    "use_cases": "what it is for, and what it must not be used for",
    "limitations": "data or conditions it is known to handle badly",
    "ethical_considerations": "risks to people, and how they are mitigated",
}


_NUMBER = (int, float)
_TYPES = {**dict.fromkeys(("input", "source_spec", "quantisation", "versions", "dataset"), dict),
          **dict.fromkeys(("class_names", "cpu_flags"), list), "confusion_matrix": (list, dict),
          **dict.fromkeys(("task", "architecture", "precision", "framework", "source_model", "imported_from",
                           "imported_sha256", "output_name", "variant", "cpu_model", "onnxruntime"), str),
          **dict.fromkeys(("accuracy", "rmse", "mae", "r2", "params", "macs", "size_bytes", "source_size_bytes",
                           "opset"), _NUMBER)}


def _readable(meta: dict) -> dict:
    """meta.json without the keys the card reads that hold the wrong type: a deploy writes whatever it
    is given (the server refuses a wrong meta.json with the reason), and its card says "not recorded"."""
    return {k: v for k, v in meta.items() if k not in _TYPES or (isinstance(v, _TYPES[k]) and
                                                                 not isinstance(v, bool))}


def _placeholder(field: str) -> list[dict]:
    if field == "ethical_considerations":
        return [{"name": f"{FILL}: {_USER_FIELDS[field]}", "mitigation_strategy": FILL}]
    return [{"description": f"{FILL}: {_USER_FIELDS[field]}"}]


def _filled(entries) -> bool:
    return bool(entries) and not any(FILL in str(v) for e in entries for v in e.values())


def read_decision(model_dir: str | os.PathLike) -> dict | None:
    path = local_path(model_dir) / DECISION_FILE
    return read_json(path) if path.is_file() else None


def _spec(meta: dict) -> dict:
    """The torch spec the ONNX model came from: embedded in meta.json, else its source folder's."""
    if meta.get("source_spec"):
        return meta["source_spec"]
    source = meta.get("source_model")
    path = local_path(source) / "spec.json" if source else None
    return read_json(path) if path and path.is_file() else {}


def _info(spec: dict) -> dict:
    return {**spec, **(spec.get("info") or {})}  # torch specs nest it under info; text specs do not


def lineage(meta: dict, decision: dict | None) -> list[dict]:
    """Each step that made the model, in order, with its settings as the step recorded them."""
    spec = _spec(meta)
    info = _info(spec)
    steps = []
    if meta.get("imported_from"):
        steps.append({"step": "import-onnx", "settings": {
            "file": meta["imported_from"], "sha256": meta.get("imported_sha256"), "opset": meta.get("opset"),
            "normalisation_added": meta.get("normalisation_added")}})
    if info.get("distillation"):
        teacher = info["distillation"].get("teacher_lineage") or {}
        if teacher.get("train_settings"):
            steps.append({"step": "train (teacher)", "settings": {"start": teacher.get("start", "scratch"),
                                                                  **teacher["train_settings"]}})
    if info.get("train_settings"):
        start = info.get("start", "scratch")
        settings = {"start": start, "architecture": spec.get("architecture"), "model_args": spec.get("args"),
                    **info["train_settings"]}
        if info.get("weights"):
            settings.update(weights=info["weights"], weights_sha256=info.get("weights_sha256"))
        steps.append({"step": "as-is" if start == "as-is" else "train", "settings": settings})
    if info.get("pruning"):
        steps.append({"step": "prune", "settings": info["pruning"]})
    if info.get("distillation"):
        settings = {k: v for k, v in info["distillation"].items() if k != "teacher_lineage"}
        steps.append({"step": "distil", "settings": {"student_architecture": spec.get("architecture"),
                                                     "student_args": spec.get("args"), **settings}})
    quantisation = meta.get("quantisation") or {}
    if spec and quantisation.get("method") != "qat":
        steps.append({"step": "export-onnx", "settings": {"opset": meta.get("opset"),
                                                          "versions": meta.get("versions")}})
    if quantisation:
        steps.append({"step": "qat" if quantisation.get("method") == "qat" else "quantise", "settings": quantisation})
    if decision:
        d = decision.get("decision") or {}
        steps.append({"step": "select", "settings": {"chosen": d.get("chosen"), **(d.get("policy") or {})}})
    return steps


def _data(meta: dict, decision: dict | None) -> dict:
    info = _info(_spec(meta))
    recorded = info.get("dataset") or meta.get("dataset") or (decision or {}).get("dataset") or {}
    return {"source": recorded.get("source", UNRECORDED), "task": meta.get("task") or recorded.get("task"),
            "splits": recorded.get("splits") or ({"test": recorded["test_examples"]}
                                                 if recorded.get("test_examples") else {}),
            "seed": recorded.get("seed"), "fractions": recorded.get("fractions"),
            "class_names": meta.get("class_names") or recorded.get("class_names"),
            "preprocessing": recorded.get("preprocessing"), "input": meta.get("input") or {}}


def _metrics(meta: dict, row: dict) -> list[dict]:
    task = meta.get("task") or "classification"
    names = ("accuracy",) if task == "classification" else ("rmse", "mae", "r2")
    return [{"type": k, "value": row.get(k, meta.get(k)), "slice": "test"}
            for k in names if row.get(k, meta.get(k)) is not None]


def _speed(row: dict, decision: dict | None) -> dict:
    """Batch-1 latency and throughput as the benchmark measured them; failing the benchmark row, the
    select step's objective value for the chosen variant (its p50, p95 or throughput)."""
    if row.get("latency_ms"):
        lat = row["latency_ms"]
        return {"source": "benchmark step", "latency_ms": {k: lat.get(k) for k in ("p50", "p95", "p99", "mean", "n")},
                "stable": lat.get("stable"), "spread": lat.get("spread"),
                "throughput_per_s": row.get("throughput_per_s"), "throughput_batch": row.get("throughput_batch")}
    d = (decision or {}).get("decision") or {}
    chosen = next((t for t in d.get("table", []) if t["name"] == d.get("chosen")), None)
    objective = (d.get("policy") or {}).get("objective")
    if chosen is None or chosen.get("objective_value") is None or objective not in ("p50", "p95", "throughput"):
        return {"source": UNRECORDED}
    if objective == "throughput":
        return {"source": "select step (objective throughput)", "throughput_per_s": chosen["objective_value"]}
    return {"source": f"select step (objective {objective})", "latency_ms": {objective: chosen["objective_value"]}}


def build(model_dir: str | os.PathLike, *, name: str, version: int | None = None, meta: dict | None = None,
          previous: dict | None = None) -> dict:
    """The card of the model in `model_dir` (model.onnx + meta.json [+ decision.json]), deployed as
    `name` version `version`. `meta` overrides meta.json (a deploy's merged metadata); `previous`,
    the card of the version before, lends the fields its owner filled in."""
    folder = local_path(model_dir)
    meta = _readable(runtime.read_meta(folder) if meta is None else meta)
    decision = read_decision(folder)
    row = (decision or {}).get("chosen_row") or {}
    onnx = runtime.onnx_file(folder)
    variant = meta.get("variant") or ((decision or {}).get("decision") or {}).get("chosen")
    task = meta.get("task") or "classification"
    blessing = (decision or {}).get("blessing")
    considerations = {k: _placeholder(k) for k in _USER_FIELDS}
    considerations["tradeoffs"] = [{"description": _tradeoff(decision)}] if decision else []
    owners = [{"name": FILL, "contact": FILL}]
    licenses = [{"identifier": FILL}]
    if previous:  # the owner's words carry over to the next version until they change them
        kept = previous.get("considerations") or {}
        considerations.update({k: kept[k] for k in _USER_FIELDS if _filled(kept.get(k))})
        details = previous.get("model_details") or {}
        owners = details.get("owners") if _filled(details.get("owners")) else owners
        licenses = details.get("licenses") if _filled(details.get("licenses")) else licenses
    data = _data(meta, decision)
    return {
        "schema_version": SCHEMA_VERSION,
        "model_details": {
            "name": name, "overview": overview(name, variant, meta, data, blessing),
            "version": {"name": str(version) if version is not None else UNRECORDED,
                        "date": time.strftime("%Y-%m-%d", time.gmtime())},
            "variant": variant, "owners": owners, "licenses": licenses,
            "documentation": "docs/model-cards.md: what each field means and how to fill in the owner's fields"},
        "model_parameters": {
            "model_architecture": meta.get("architecture"), "framework": meta.get("framework", "onnx"),
            "precision": meta.get("precision"), "params": meta.get("params"), "macs": meta.get("macs"),
            "input_format": _input_format(data["input"]), "output_format": _output_format(meta, task),
            "data": data, "lineage": lineage(meta, decision)},
        "quantitative_analysis": {
            "performance_metrics": _metrics(meta, row),
            "confusion_matrix": row.get("confusion_matrix") or meta.get("confusion_matrix"),
            "speed": _speed(row, decision),
            "size": {"model_bytes": onnx.stat().st_size, "gzip_bytes": row.get("gzip_bytes"),
                     "source_bytes": meta.get("source_size_bytes")},
            "machine": (decision or {}).get("machine") or _quantise_machine(meta)},
        "blessing": {"selected_by": "select step" if decision else UNRECORDED,
                     "blessed": blessing.get("blessed") if blessing else None,
                     "reason": blessing.get("reason") if blessing else "deployed without the select step "
                                                                        "(no decision.json): not blessed by modelpress",
                     "champion": (decision or {}).get("champion"),
                     "selection_reason": ((decision or {}).get("decision") or {}).get("reason"),
                     "ratios": (decision or {}).get("ratios") or {}},
        "considerations": considerations,
    }


def _quantise_machine(meta: dict) -> dict:
    """Where the quantise step ran (its CPU flags chose the kernels): the machine the card can name
    when the select step recorded none."""
    if not meta.get("cpu_model"):
        return {"source": UNRECORDED}
    return {"source": "where the quantise step ran", "cpu_model": meta["cpu_model"], "cpu_flags": meta.get("cpu_flags"),
            "versions": {"onnxruntime": meta.get("onnxruntime")}}


def _tradeoff(decision: dict) -> str:
    r = decision.get("ratios") or {}
    parts = [f"{v:.2f}x p50 speed-up vs {k.split('_vs_')[1]}" for k, v in r.items() if k.startswith("speedup_p50")]
    parts += [f"size {v:.2f}x of {k.split('_vs_')[1]}" for k, v in r.items() if k.startswith("size_ratio")]
    parts += [f"{k.split('_delta_vs_')[0]} {v:+.4f} vs {k.split('_delta_vs_')[1]}" for k, v in r.items()
              if "_delta_vs_" in k]
    return "; ".join(parts) or UNRECORDED


def _input_format(info: dict) -> str:
    if not info:
        return UNRECORDED
    shape = info.get("shape")
    parts = [f"{info.get('name', 'input')}: {info.get('datatype', '')} {shape}".strip()]
    parts += [f"{k.replace('_', ' ')} {info[k]}" for k in ("layout", "channels", "value_range", "normalisation",
                                                            "preprocessing") if info.get(k) is not None]
    return "; ".join(parts)


def _output_format(meta: dict, task: str) -> str:
    out = meta.get("output_name", "logits")
    if task == "regression":
        return f"{out}: the predicted value in the target's units"
    names = meta.get("class_names") or []
    return f"{out}: one score per class ({len(names)} classes, in class_names order)" if names else out


def overview(name: str, variant, meta: dict, data: dict, blessing: dict | None) -> str:
    blessed = "" if blessing is None else ("; blessed" if blessing.get("blessed") else "; NOT blessed")
    return (f"{name}: {variant or 'model'} ({meta.get('precision') or 'fp32'} {meta.get('architecture') or 'ONNX'}), "
            f"{meta.get('task') or 'classification'} on {data['source']}{blessed}")


def write(folder: str | os.PathLike, card: dict) -> None:
    """model_card.json and model_card.md into `folder`, each written whole (temp file, then rename)."""
    from modelpress.deploy.card_markdown import render

    folder = Path(folder)
    write_json_atomic(folder / CARD_JSON, card)
    write_text_atomic(folder / CARD_MD, render(card))


def refresh(folder: str | os.PathLike) -> None:
    """Render model_card.md again from model_card.json, after its owner filled in their fields there."""
    write(local_path(folder), read(folder, "json"))


def read(folder: str | os.PathLike, fmt: str = "markdown") -> str | dict:
    """A version folder's card: the Markdown text, or (fmt "json") the dict; a clear error when absent."""
    path = local_path(folder) / (CARD_JSON if fmt == "json" else CARD_MD)
    if not path.is_file():
        raise ModelpressError(f"{local_path(folder)} has no {path.name}: it was deployed before model cards or by "
                              "hand; deploy it again to write one")
    return read_json(path) if fmt == "json" else path.read_text()
