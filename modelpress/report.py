"""The comparison report: one self-contained HTML file (images embedded) and a Markdown table."""

from __future__ import annotations

import base64
import html
import io


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ordered(results: dict) -> list[dict]:
    rows = results["variants"]
    order = {"baseline": 0, "baseline-onnx": 1, "candidate": 2, "champion": 3}
    return sorted(rows, key=lambda r: order.get(r["role"], 2))


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names on the front: no other point is both at least as fast and at least as accurate."""
    front = []
    for name, lat, acc in points:
        dominated = any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for _, l2, a2 in points)
        if not dominated:
            front.append(name)
    return front


def _int(v):
    return int(v) if isinstance(v, float) else v  # KFP metadata turns every number into a float


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def markdown_table(results: dict, decision: dict | None = None) -> str:
    chosen = (decision or {}).get("chosen")
    lines = ["| variant | role | accuracy | p50 ms | p95 ms | p99 ms | rows/s | size kB | params | MMACs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in _ordered(results):
        lat = r.get("latency_ms") or {}
        mark = " **(chosen)**" if r["name"] == chosen else ""
        lines.append(f"| {r['name']}{mark} | {r['role']} | {_fmt(r.get('accuracy'), '.4f')} | "
                     f"{_fmt(lat.get('p50'), '.4f')} | {_fmt(lat.get('p95'), '.4f')} | {_fmt(lat.get('p99'), '.4f')} | "
                     f"{_fmt(r.get('throughput_per_s'), ',.0f')} | {r['size_bytes'] / 1e3:,.1f} | "
                     f"{_fmt(_int(r.get('params')), ',')} | {_fmt(r['macs'] / 1e6 if r.get('macs') else None, '.2f')} |")
    return "\n".join(lines) + "\n"


def render_html(results: dict, decision: dict | None = None, blessing: dict | None = None,
                title: str = "modelpress: model comparison") -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _ordered(results) if r.get("latency_ms")]
    chosen = (decision or {}).get("chosen")
    images = []
    # latency vs accuracy, with the Pareto front and the accuracy bar
    fig, ax = plt.subplots(figsize=(7, 4.2))
    pts = [(r["name"], r["latency_ms"]["p50"], r["accuracy"]) for r in rows]
    front = set(pareto_front(pts))
    for name, lat, acc in pts:
        ax.scatter(lat, acc, s=70 if name == chosen else 35, marker="*" if name == chosen else "o",
                   color="tab:red" if name == chosen else ("tab:blue" if name in front else "tab:gray"), zorder=3)
        ax.annotate(name, (lat, acc), fontsize=7, xytext=(4, 3), textcoords="offset points")
    fp = sorted((lat, acc) for name, lat, acc in pts if name in front)
    if fp:
        ax.step([p[0] for p in fp], [p[1] for p in fp], where="post", color="tab:blue", lw=1, label="Pareto front")
    if decision and decision.get("accuracy_bar") is not None:
        ax.axhline(decision["accuracy_bar"], color="tab:red", ls="--", lw=1, label="accuracy bar (tolerance)")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency at batch 1 (ms, log scale)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    images.append(("Latency vs accuracy", _png(fig)))
    # on-disk size
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1))
    ax.barh([r["name"] for r in rows], [r["size_bytes"] / 1e3 for r in rows],
            color=["tab:red" if r["name"] == chosen else "tab:blue" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("size on disk (kB)")
    images.append(("Size", _png(fig)))
    # confusion matrix of the chosen model
    chosen_row = next((r for r in rows if r["name"] == chosen), None)
    if chosen_row and chosen_row.get("confusion_matrix"):
        names = results["dataset"]["class_names"]
        fig, ax = plt.subplots(figsize=(4.5, 4))
        m = chosen_row["confusion_matrix"]
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i, row in enumerate(m):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, v, ha="center", va="center", fontsize=6)
        images.append((f"Confusion matrix: {chosen}", _png(fig)))
    # table
    head = ["variant", "role", "accuracy", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "stable", "rows/s",
            "size kB", "gzip kB", "params", "MMACs", "GFLOP/s", "runtime"]
    trs = []
    for r in _ordered(results):
        lat = r.get("latency_ms") or {}
        cls = ' class="chosen"' if r["name"] == chosen else ""
        cells = [r["name"] + (" ★" if r["name"] == chosen else ""), r["role"], _fmt(r.get("accuracy"), ".4f"),
                 _fmt(lat.get("p50"), ".4f"), _fmt(lat.get("p90"), ".4f"), _fmt(lat.get("p95"), ".4f"),
                 _fmt(lat.get("p99"), ".4f"), "" if not lat else ("yes" if lat.get("stable") else "no"),
                 _fmt(r.get("throughput_per_s"), ",.0f"), f"{r['size_bytes'] / 1e3:,.1f}",
                 f"{r['gzip_bytes'] / 1e3:,.1f}", _fmt(_int(r.get("params")), ","),
                 _fmt(r["macs"] / 1e6 if r.get("macs") else None, ".2f"),
                 _fmt(r["achieved_flops_per_s"] / 1e9 if r.get("achieved_flops_per_s") else None, ".2f"),
                 (r.get("runtime") or "") + (f" — {r['note']}" if r.get("note") else "")]
        trs.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right}td:first-child,td:nth-child(2),td:last-child{text-align:left}"
             "tr.chosen{background:#ffe9e9;font-weight:600}pre{background:#f6f6f6;padding:1em}"
             "img{max-width:100%}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if decision:
        parts.append(f"<p><b>Chosen:</b> {html.escape(str(decision.get('chosen')))} — "
                     f"{html.escape(decision.get('reason', ''))}</p>")
    if blessing:
        verdict = "blessed" if blessing["blessed"] else "not blessed"
        parts.append(f"<p><b>Deployment gate:</b> {verdict} — {html.escape(blessing['reason'])}</p>")
    parts.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(trs) + "</table>")
    if decision:
        parts.append("<h2>Constraints</h2><table><tr><th>variant</th><th>accuracy</th><th>objective</th>"
                     "<th>checks</th><th>eligible</th></tr>")
        for t in decision["table"]:
            checks = ", ".join(f"{k}: {'ok' if v else 'FAIL'}" for k, v in t["checks"].items())
            parts.append(f"<tr><td>{html.escape(t['name'])}</td><td>{_fmt(t['accuracy'], '.4f')}</td>"
                         f"<td>{_fmt(t['objective_value'], '.4g')}</td><td>{checks}</td>"
                         f"<td>{'yes' if t['eligible'] else 'no'}</td></tr>")
        parts.append("</table>")
    for caption, src in images:
        parts.append(f"<h2>{html.escape(caption)}</h2><img src='{src}' alt='{html.escape(caption)}'>")
    machine = results.get("machine", {})
    parts.append("<h2>Machine</h2><pre>" + html.escape("\n".join(f"{k}: {v}" for k, v in machine.items())) + "</pre>")
    if results.get("gpu"):
        parts.append("<h2>GPU</h2><pre>" + html.escape("\n".join(
            f"{g['name']}: p50 {g['latency_ms']['p50']:.4f} ms, {g['throughput_per_s']:,.0f} rows/s"
            for g in results["gpu"])) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
