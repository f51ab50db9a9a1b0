"""A model card (the dict `card.build` makes) as Markdown, and as a short plain-text summary."""

from __future__ import annotations

import json

from modelpress.deploy.card import FILL, UNRECORDED

_LABELS = {"accuracy": "Accuracy", "rmse": "RMSE", "mae": "MAE", "r2": "R²"}


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value, fmt: str = ".4g") -> str:
    return UNRECORDED if value is None else format(value, fmt)


def _settings(settings: dict) -> str:
    return ", ".join(f"{k} {_cell(v)}" for k, v in settings.items() if v not in (None, "", [], {})) or "defaults"


def _splits(splits: dict | None) -> str:
    order = {"train": 0, "validation": 1, "test": 2}  # JSON files sort their keys; people read them in this order
    return ", ".join(f"{k} {v}" for k, v in sorted((splits or {}).items(), key=lambda kv: order.get(kv[0], 3))) \
        or UNRECORDED


def _data(d: dict) -> list[str]:
    lines = ["## Data", "", f"- **Source:** {d['source']}", f"- **Task:** {d.get('task') or UNRECORDED}"]
    lines.append(f"- **Splits:** {_splits(d.get('splits'))}"
                 + (f" (seed {d['seed']}, fractions {_cell(d['fractions'])})" if d.get("fractions") else ""))
    if d.get("class_names"):
        lines.append(f"- **Classes ({len(d['class_names'])}):** {', '.join(map(str, d['class_names']))}")
    if d.get("preprocessing"):
        lines.append(f"- **Preprocessing:** {_settings(d['preprocessing'])}")
    for key, label in (("shape", "Input shape"), ("datatype", "Input datatype"), ("layout", "Layout"),
                       ("channels", "Channels"), ("value_range", "Value range"), ("normalisation", "Normalisation"),
                       ("preprocessing", "What to send")):
        if d["input"].get(key) is not None:
            lines.append(f"- **{label}:** {_cell(d['input'][key])}")
    return lines + [""]


def _confusion(cm, class_names) -> list[str]:
    matrix = cm["matrix"] if isinstance(cm, dict) else cm
    names = (cm.get("class_names") if isinstance(cm, dict) else None) or class_names or list(range(len(matrix)))
    lines = ["Confusion matrix (rows: true class, columns: predicted):", "",
             "| true \\ predicted | " + " | ".join(map(str, names)) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| **{n}** | " + " | ".join(str(v) for v in row) + " |" for n, row in zip(names, matrix)]
    return lines + [""]


def _quantitative(q: dict, class_names) -> list[str]:
    lines = ["## Metrics on the test split", ""]
    lines += [f"- **{_LABELS.get(m['type'], m['type'])}:** {_num(m['value'])}" for m in q["performance_metrics"]] \
        or [f"- {UNRECORDED}"]
    lines.append("")
    if q.get("confusion_matrix"):
        lines += _confusion(q["confusion_matrix"], class_names)
    speed, size, machine = q["speed"], q["size"], q["machine"]
    lines += ["## Speed and size", "", f"Measured by: {speed['source']}.", ""]
    lat = speed.get("latency_ms") or {}
    if lat:
        lines.append("- **Batch-1 latency:** " + ", ".join(f"{k} {_num(v)} ms" for k, v in lat.items()
                                                            if k != "n" and v is not None)
                     + (f" over {lat['n']} calls" if lat.get("n") else "")
                     + ("" if speed.get("stable") in (None, True) else
                        f" (unstable: windows spread {speed.get('spread', 0):.0%})"))
    if speed.get("throughput_per_s") is not None:
        batch = f" at batch {speed['throughput_batch']}" if speed.get("throughput_batch") else ""
        lines.append(f"- **Throughput:** {speed['throughput_per_s']:,.0f} rows/s{batch}")
    lines.append(f"- **Model file:** {size['model_bytes']:,} bytes"
                 + (f" ({size['gzip_bytes']:,} gzipped)" if size.get("gzip_bytes") else "")
                 + (f"; the model it was made from: {size['source_bytes']:,} bytes" if size.get("source_bytes") else ""))
    lines.append(f"- **Machine** ({machine.get('source', 'benchmark step')}): "
                 + ", ".join(f"{k} {_cell(machine[k])}" for k in ("cpu_model", "cpu_count", "threads", "cpu_flags",
                                                                   "gpu", "platform", "python", "versions", "date")
                             if machine.get(k) not in (None, "", [])) if machine.get("cpu_model") else
                 f"- **Machine:** {UNRECORDED}")
    return lines + [""]


def _blessing(b: dict) -> list[str]:
    verdict = {True: "**blessed**", False: "**not blessed**", None: UNRECORDED}[b.get("blessed")]
    lines = ["## Selection and blessing", "", f"- **Blessing:** {verdict}: {b['reason']}",
             f"- **Champion compared with:** {b.get('champion') or 'none deployed (the absolute bar alone decided)'}"
             if b.get("selected_by") != UNRECORDED else f"- **Champion compared with:** {UNRECORDED}"]
    if b.get("selection_reason"):
        lines.append(f"- **Why this variant:** {b['selection_reason']}")
    if b.get("ratios"):
        lines.append("- **Against the baselines:** " + ", ".join(f"{k} {v:.3g}" for k, v in b["ratios"].items()
                                                              if not k.startswith("stable_")))
    return lines + [""]


def _considerations(c: dict) -> list[str]:
    lines = ["## Considerations", "",
             f"Fields marked {FILL} are for the model's owner: fill them in model_card.json in this version's "
             "folder, then `modelpress.deploy.card.refresh(folder)` renders this file again; the next deploy "
             "carries your words over (docs/model-cards.md).", ""]
    for field, entries in c.items():
        title = field.replace("_", " ").capitalize()
        for e in entries or [{"description": "none"}]:
            text = e.get("description") or (f"{e.get('name')}; mitigation: {e.get('mitigation_strategy')}")
            lines.append(f"- **{title}:** {text}")
    return lines + [""]


def render(card: dict) -> str:
    details, params = card["model_details"], card["model_parameters"]
    lines = [f"# Model card: {details['name']} version {details['version']['name']}", "", details["overview"], "",
             "## Model details", "",
             f"- **Variant:** {details.get('variant') or UNRECORDED}",
             f"- **Architecture:** {params.get('model_architecture') or UNRECORDED} "
             f"({params.get('framework')}, {params.get('precision') or 'fp32'})",
             f"- **Parameters:** {_num(params.get('params'), ',')}; MACs per example {_num(params.get('macs'), ',')}",
             f"- **Input:** {params['input_format']}", f"- **Output:** {params['output_format']}",
             f"- **Deployed:** {details['version']['date']}",
             "- **Owners:** " + "; ".join(f"{o.get('name')} ({o.get('contact')})" for o in details["owners"]),
             "- **License:** " + "; ".join(str(x.get("identifier") or x.get("custom_text")) for x in details["licenses"]),
             ""]
    lines += _data(params["data"])
    lines += ["## Lineage", ""]
    lines += [f"{i}. **{s['step']}**: {_settings(s['settings'])}" for i, s in enumerate(params["lineage"], 1)] \
        or [f"{UNRECORDED}: meta.json names no step that made this model"]
    lines.append("")
    lines += _quantitative(card["quantitative_analysis"], params["data"].get("class_names"))
    lines += _blessing(card["blessing"])
    lines += _considerations(card["considerations"])
    return "\n".join(lines)


def summary(card: dict, limit: int, pointer: str = "") -> str:
    """The card in at most `limit` characters of plain text: the most telling lines first, whole lines
    only, and `pointer` (where the full card is) always kept at the end."""
    details, params, q, b = (card["model_details"], card["model_parameters"], card["quantitative_analysis"],
                             card["blessing"])
    lat = q["speed"].get("latency_ms") or {}
    lines = [details["overview"],
             "Test: " + (", ".join(f"{_LABELS.get(m['type'], m['type'])} {_num(m['value'])}"
                                   for m in q["performance_metrics"]) or UNRECORDED),
             "Speed: " + (", ".join(f"{k} {_num(v)} ms" for k, v in lat.items() if k in ("p50", "p95", "p99")
                                    and v is not None) or UNRECORDED)
             + (f", {q['speed']['throughput_per_s']:,.0f} rows/s" if q["speed"].get("throughput_per_s") else "")
             + f"; size {q['size']['model_bytes']:,} bytes",
             f"Blessing: {b['reason']}" + (f" (champion: {b['champion']})" if b.get("champion") else ""),
             f"Data: {params['data']['source']}, splits {_splits(params['data'].get('splits'))}",
             "Lineage: " + (" -> ".join(s["step"] for s in params["lineage"]) or UNRECORDED)]
    tail = f"Full card: {pointer}" if pointer else ""
    out: list[str] = []
    for line in lines:
        if len("\n".join([*out, line, tail])) > limit:
            break
        out.append(line)
    text = "\n".join([*out, tail]) if tail else "\n".join(out)
    return text[:limit]
