"""The comparison report: one self-contained HTML file (images embedded) and a Markdown table.

Input: the benchmark results (comparison.benchmark) and, from the select step, the decision
and blessing (selection.decide). Scores are the task's: accuracy for classification; RMSE,
MAE and R² for regression (`quality`). A latency figure whose measurement windows did not settle
(`latency_ms.stable` false) is printed with its label wherever it appears, never bare.
"""

from __future__ import annotations

import html

from modelpress.core.results import Role
from modelpress.selection import quality, report_plots
from modelpress.selection.report_plots import pareto_front  # noqa: F401  (public here since before the split)

KEY_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx")  # the ones that decide int8/bf16 kernels
UNITS = {"p50": "ms", "p95": "ms", "size": "bytes", "throughput": "rows/s",  # selection.OBJECTIVES' units
         "edge": "bytes"}
STABLE_WINDOWS = 3  # benchmarking.measure_windows pools, and judges stability on, 3 consecutive windows
UNSTABLE_NOTE = ("unstable: the measurement windows did not settle (the last 3 windows' p50 latency and "
                 "throughput did not agree within the stability tolerance), so this latency is indicative only; "
                 "spread = (max − min) / min of those windows' p50, the figure selection uses as noise.")


def _ordered(results: dict) -> list[dict]:
    rows = results["variants"]
    order = {Role.BASELINE: 0, Role.BASELINE_ONNX: 1, Role.CANDIDATE: 2, Role.CHAMPION: 3}
    return sorted(rows, key=lambda r: order.get(r["role"], 2))


def _int(v):
    return int(v) if isinstance(v, float) else v  # KFP metadata turns every number into a float


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def _ms(v) -> str:
    return "–" if v is None else f"{v:.4f} ms"


def _window_range(row: dict) -> tuple[float, float] | None:
    """The p50 range of the windows the figures pool (benchmarking.best_run), else the last ones."""
    pooled = (row.get("latency_ms") or {}).get("pooled_windows")
    w = row.get("window_p50_ms") or []
    w = w[pooled[0]:pooled[1]] if pooled else w[-STABLE_WINDOWS:]
    return (min(w), max(w)) if w else None


def is_stable(row: dict) -> bool:
    return bool((row.get("latency_ms") or {}).get("stable"))


def spread(row: dict) -> float | None:
    """Relative spread of the pooled windows' p50 (as selection's noise, without its floor)."""
    recorded = (row.get("latency_ms") or {}).get("spread")
    if recorded is not None:  # benchmarking.best_run measured it on the windows the figures pool
        return recorded
    rng = _window_range(row)
    if not rng or len(row["window_p50_ms"]) < 2 or rng[0] <= 0:
        return None
    return (rng[1] - rng[0]) / rng[0]


def stability_label(row: dict) -> str:
    """'' for a stable measurement, else ' (unstable, spread 12 %)' (or ' (unstable)' with no windows)."""
    if not row.get("latency_ms") or is_stable(row):
        return ""
    s = spread(row)
    return " (unstable)" if s is None else f" (unstable, spread {s * 100:.0f} %)"


def p50_text(row: dict, marker: str = "") -> str:
    """The p50 with its unit and, when unstable, its label and an optional footnote marker."""
    lat = row.get("latency_ms") or {}
    label = stability_label(row)
    return _ms(lat.get("p50")) + label + (marker if label else "")


def _rows_by_name(results: dict) -> dict:
    return {r["name"]: r for r in results["variants"]}


def decision_text(results: dict, decision: dict) -> str:
    """The decision's reason with the objective figure's unit and, if unstable, its label.

    selection writes the figure as "(<value:.4g>)"; that one figure is annotated in place.
    """
    reason = decision.get("reason", "")
    row = _rows_by_name(results).get(decision.get("chosen"))
    objective = (decision.get("policy") or {}).get("objective", "p50")
    entry = next((t for t in decision.get("table", []) if t["name"] == decision.get("chosen")), None)
    if row is None or entry is None or entry.get("objective_value") is None:
        return reason
    value = f"{entry['objective_value']:.4g}"
    unit = f" {UNITS[objective]}" if objective in UNITS else ""
    label = stability_label(row) if UNITS.get(objective) == "ms" else ""
    return reason.replace(f"({value})", f"({value}{unit}{label})", 1)


def _unstable_caveat(results: dict, decision: dict) -> str:
    """A warning naming the chosen, tied or other eligible variants whose latency is unstable, or ''.

    Any of them can change the ranking, not just the winner."""
    rows = _rows_by_name(results)
    names = [decision.get("chosen")] + decision.get("ties", []) + [t["name"] for t in decision.get("table", [])
                                                                   if t.get("eligible")]
    names = list(dict.fromkeys(n for n in names if n))  # chosen first, each once
    bad = [rows[n] for n in names if n in rows and rows[n].get("latency_ms") and not is_stable(rows[n])]
    if not bad:
        return ""
    figures = "; ".join(f"{html.escape(r['name'])}: p50 {html.escape(p50_text(r))}" for r in bad)
    return (f"<p class='warn'><b>Unstable latency:</b> {figures}. The windows did not settle, so the latency "
            f"ranking is indicative only; re-run the benchmark on a quieter machine (or with more/longer windows) "
            f"before relying on it.</p>")


def _scores(results: dict) -> tuple[str, ...]:
    return quality.score_names(quality.task_of(results))


def _score_cells(results: dict, row: dict) -> list[str]:
    return [quality.fmt(k, row.get(k)) for k in _scores(results)]


def starting_point_note(results: dict) -> str:
    """What the report says when the run had no torch model (it started from an ONNX file), else ''."""
    if quality.has_torch_baseline(results):
        return ""
    return (f"{quality.NO_TORCH}: the ONNX fp32 export sets the {quality.metric_of(results).label} bar and is "
            "the latency reference; there are no ratios against torch.")


def left_out_text(results: dict) -> str:
    """The variants the recipe left out, grouped by the step and reason, or ''."""
    groups: dict[tuple, list[str]] = {}
    for item in results.get("left_out") or []:
        groups.setdefault((item.get("step"), item.get("reason")), []).append(item["name"])
    return "; ".join(f"{', '.join(names)} ({step} skipped: {reason})" for (step, reason), names in groups.items())


def markdown_decision(decision: dict, blessing: dict) -> str:
    """The decision and the deployment gate, as the select step's Markdown opens."""
    return (f"Chosen: **{decision['chosen']}**. {decision['reason']}\n\n"
            f"Deployment gate: {'blessed' if blessing['blessed'] else 'not blessed'}: {blessing['reason']}\n\n")


def markdown_table(results: dict, decision: dict | None = None) -> str:
    chosen = (decision or {}).get("chosen")
    scores = _scores(results)
    lines = [f"| variant | role | {' | '.join(quality.label(k) for k in scores)} | p50 | p95 | p99 | rows/s | "
             "size kB | params | MMACs |",
             "|---|---|" + "---:|" * len(scores) + "---:|---:|---:|---:|---:|---:|---:|"]
    unstable, md_star = False, "\\*"  # a bare * would start emphasis in Markdown
    for r in _ordered(results):
        lat = r.get("latency_ms") or {}
        mark = " **(chosen)**" if r["name"] == chosen else ""
        unstable |= bool(stability_label(r))
        lines.append(f"| {r['name']}{mark} | {r['role']} | {' | '.join(_score_cells(results, r))} | "
                     f"{p50_text(r, md_star)} | {_ms(lat.get('p95'))} | {_ms(lat.get('p99'))} | "
                     f"{_fmt(r.get('throughput_per_s'), ',.0f')} | {r['size_bytes'] / 1e3:,.1f} | "
                     f"{_fmt(_int(r.get('params')), ',')} | {_fmt(r['macs'] / 1e6 if r.get('macs') else None, '.2f')} |")
    if unstable:
        lines += ["", f"\\* {UNSTABLE_NOTE}"]
    for note in (starting_point_note(results), left_out_text(results) and f"Left out: {left_out_text(results)}."):
        if note:
            lines += ["", note]
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_cell(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return str(v)


def machine_html(machine: dict) -> str:
    """The machine as a wrapping table: the flags that matter up front, the full list collapsed."""
    trs = []
    for k, v in machine.items():
        if k == "cpu_flags":
            flags = list(v or [])
            have = {f: (any(x.startswith("amx") for x in flags) if f == "amx" else f in flags) for f in KEY_FLAGS}
            key = " ".join(f"<span class='flag {'on' if ok else 'off'}'>{f} {'✓' if ok else '✗'}</span>"
                           for f, ok in have.items())
            cell = (f"{key}<details><summary>all {len(flags)} flags</summary>"
                    f"<div class='wrap flags'>{html.escape(' '.join(flags))}</div></details>")
        else:
            cell = f"<div class='wrap'>{html.escape(_cell(v))}</div>"
        trs.append(f"<tr><th>{html.escape(str(k))}</th><td>{cell}</td></tr>")
    return "<h2>Machine</h2><table class='kv'>" + "".join(trs) + "</table>"


def _scatter(results: dict, rows: list[dict], decision: dict | None,
             chosen: str | None) -> tuple[str, str] | None:
    """The latency/quality PNG and its key table (number -> variant), or None with nothing to plot."""
    metric = quality.metric_of(results)
    name = metric.name
    pts = [{"key": i, "name": r["name"], "p50": r["latency_ms"]["p50"], name: r[name],
            "stable": is_stable(r), "window_range": _window_range(r), "row": r}
           for i, r in enumerate((r for r in rows if r["latency_ms"].get("p50") is not None
                                  and r.get(name) is not None), start=1)]
    if not pts:
        return None
    decision = decision or {}
    bar = decision.get("quality_bar", decision.get("accuracy_bar"))
    fig, _, _ = report_plots.latency_accuracy(pts, chosen, bar, metric=name, label=f"test {metric.label}",
                                              higher_is_better=metric.higher_is_better)
    front = set(pareto_front([(p["name"], p["p50"], p[name]) for p in pts], metric.higher_is_better))
    trs = []
    for p in pts:
        notes = [n for n, on in (("chosen", p["name"] == chosen), ("Pareto front", p["name"] in front)) if on]
        trs.append(f"<tr><td>{p['key']}</td><td>{html.escape(p['name'])}</td>"
                   f"<td>{html.escape(p50_text(p['row']))}</td><td>{quality.fmt(name, p[name])}</td>"
                   f"<td>{', '.join(notes)}</td></tr>")
    key = (f"<table class='key'><tr><th>#</th><th>variant</th><th>p50</th><th>{html.escape(metric.label)}</th>"
           "<th></th></tr>" + "".join(trs) + "</table>")
    return report_plots.png(fig), key


def _constraints(results: dict, decision: dict) -> list[str]:
    rows = _rows_by_name(results)
    metric = quality.metric_of(results)
    objective = (decision.get("policy") or {}).get("objective", "p50")
    out = [f"<h2>Constraints</h2><table><tr><th>variant</th><th>{html.escape(metric.label)}</th><th>objective</th>"
           "<th>checks</th><th>eligible</th></tr>"]
    noted = False
    for t in decision["table"]:
        row = rows.get(t["name"], {})
        checks = dict(t["checks"])
        candidate = checks.get("deployable", True)
        if not candidate:
            checks.pop("deployable")  # not a failure: it was never in the running (see the note)
        shown = ", ".join(f"{k}: {'ok' if v else 'FAIL'}" for k, v in checks.items())
        if candidate:
            eligible = "yes" if t["eligible"] else "no"
        elif t["name"] == decision.get("baseline") or row.get("role") == Role.BASELINE:
            eligible, noted = "baseline (not a candidate)¹", True
        else:
            eligible, noted = f"not a candidate ({row.get('kind', 'not ONNX')})¹", True
        value = t["objective_value"]
        if value is not None and UNITS.get(objective) == "ms":
            obj = _ms(value) + stability_label(row)
        else:
            obj = _fmt(value, ".4g") + (f" {UNITS[objective]}" if value is not None and objective in UNITS else "")
        out.append(f"<tr><td>{html.escape(t['name'])}</td><td>{quality.fmt(metric.name, t.get(metric.name))}</td>"
                   f"<td>{html.escape(obj)}</td><td>{shown}</td><td>{html.escape(eligible)}</td></tr>")
    out.append("</table>")
    if noted:
        out.append("<p class='note'>¹ Only ONNX variants are deployment candidates. The torch eager fp32 model is "
                   f"the baseline: its {metric.label} sets the {metric.label} bar and its latency is the reference "
                   "for the speed-ups; it is measured for comparison and is never deployed.</p>")
    return out


CSS = ("<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
       "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
       "text-align:right}td:first-child,td:nth-child(2),td:last-child{text-align:left}"
       "tr.chosen{background:#ffe9e9;font-weight:600}pre{background:#f6f6f6;padding:1em;"
       "white-space:pre-wrap;overflow-wrap:anywhere}img{max-width:100%}"
       ".wrap{overflow-wrap:anywhere;word-break:break-word;white-space:normal}"
       "table.kv{max-width:100%;table-layout:fixed}table.kv th{text-align:left;vertical-align:top;width:9em}"
       "table.kv td{text-align:left}.flag{display:inline-block;margin:0 .6em 2px 0;font-family:monospace}"
       ".flag.on{color:#060;font-weight:600}.flag.off{color:#888}.flags{font-family:monospace;font-size:12px}"
       ".warn{background:#fff4e0;border-left:4px solid #e69500;padding:.4em .8em}"
       ".note{font-size:12px;color:#444}.figure{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}"
       "</style>")


def render_html(results: dict, decision: dict | None = None, blessing: dict | None = None,
                title: str = "modelpress: model comparison") -> str:
    rows = [r for r in _ordered(results) if r.get("latency_ms")]
    chosen = (decision or {}).get("chosen")
    images = []  # (caption, data URI, HTML shown beside it)
    metric = quality.metric_of(results)
    scatter = _scatter(results, rows, decision, chosen)
    if scatter:
        images.append((f"Latency vs {metric.label}", *scatter))
    if rows:
        images.append(("Size", report_plots.png(report_plots.sizes(
            [r["name"] for r in rows], [r["size_bytes"] / 1e3 for r in rows], chosen)), ""))
    chosen_row = next((r for r in rows if r["name"] == chosen), None)
    if chosen_row and chosen_row.get("confusion_matrix"):
        fig = report_plots.confusion(chosen_row["confusion_matrix"], results["dataset"]["class_names"])
        images.append((f"Confusion matrix: {chosen}", report_plots.png(fig), ""))
    head = ["variant", "role", *(quality.label(k) for k in _scores(results)), "p50", "p90", "p95", "p99", "stable",
            "rows/s", "size kB", "gzip kB", "params", "MMACs", "GFLOP/s", "runtime"]
    trs, any_unstable = [], False
    for r in _ordered(results):
        lat = r.get("latency_ms") or {}
        unstable = bool(stability_label(r))
        any_unstable |= unstable
        cls = ' class="chosen"' if r["name"] == chosen else ""
        cells = [r["name"] + (" ★" if r["name"] == chosen else ""), r["role"], *_score_cells(results, r),
                 p50_text(r, "*"), _ms(lat.get("p90")), _ms(lat.get("p95")), _ms(lat.get("p99")),
                 "" if not lat else ("yes" if lat.get("stable") else "no*"),
                 _fmt(r.get("throughput_per_s"), ",.0f"), f"{r['size_bytes'] / 1e3:,.1f}",
                 f"{r['gzip_bytes'] / 1e3:,.1f}", _fmt(_int(r.get("params")), ","),
                 _fmt(r["macs"] / 1e6 if r.get("macs") else None, ".2f"),
                 _fmt(r["achieved_flops_per_s"] / 1e9 if r.get("achieved_flops_per_s") else None, ".2f"),
                 (r.get("runtime") or "") + (f" — {r['note']}" if r.get("note") else "")]
        trs.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>", CSS,
             "</head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p><b>Quality metric:</b> test {html.escape(metric.label)} "
             f"({'higher' if metric.higher_is_better else 'lower'} is better)"
             + (f", {quality.task_of(results)}" if quality.task_of(results) != "classification" else "") + "</p>"]
    for note in (starting_point_note(results), left_out_text(results) and f"Left out: {left_out_text(results)}."):
        if note:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
    if decision:
        parts.append(f"<p><b>Chosen:</b> {html.escape(str(decision.get('chosen')))} — "
                     f"{html.escape(decision_text(results, decision))}</p>")
        if chosen_row:
            lat = chosen_row["latency_ms"]
            scores = ", ".join(quality.said(k, chosen_row.get(k)) for k in _scores(results))
            parts.append(f"<p><b>Chosen variant:</b> {html.escape(scores)}, "
                         f"p50 {html.escape(p50_text(chosen_row))}, p95 {_ms(lat.get('p95'))}, "
                         f"size {chosen_row['size_bytes'] / 1e3:,.1f} kB</p>")
        parts.append(_unstable_caveat(results, decision))
    if blessing:
        verdict = "blessed" if blessing["blessed"] else "not blessed"
        parts.append(f"<p><b>Deployment gate:</b> {verdict} — {html.escape(blessing['reason'])}</p>")
    parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(trs) + "</table>")
    if any_unstable:
        parts.append(f"<p class='note'>* {html.escape(UNSTABLE_NOTE)}</p>")
    if decision:
        parts += _constraints(results, decision)
    for caption, src, beside in images:
        parts.append(f"<h2>{html.escape(caption)}</h2><div class='figure'>"
                     f"<img src='{src}' alt='{html.escape(caption)}'>{beside}</div>")
    parts.append(machine_html(results.get("machine", {})))
    if results.get("gpu"):
        parts.append("<h2>GPU</h2><pre>" + html.escape("\n".join(
            f"{g['name']}: p50 {p50_text(g)}, {g['throughput_per_s']:,.0f} rows/s"
            for g in results["gpu"])) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)
