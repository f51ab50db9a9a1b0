"""tune-serving's report: every point measured, the chosen one and why (in words, with units), the
default config's point beside it, the machine; as JSON, a Markdown table and a throughput-vs-p99
plot (the chosen point and the budget line marked)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _machine(cores: int) -> dict:
    from modelpress.selection.benchmarking import machine
    try:
        info = machine(threads=cores)
    except ImportError:  # torch absent: the rest still says what the figures were measured on
        from modelpress.core.hardware import cpu_flags, cpu_model
        info = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
                "cpu_flags": [f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "f16c", "sse4"))]}
    info["usable_cores"] = cores
    return info


def _fig(point: dict, key: str) -> float:
    return point["latency_ms"].get(key, float("nan"))


def explain(points: list[dict], default: dict, chosen: dict | None, ties: list[dict], best: dict | None,
            budget_ms: float) -> str:
    """Why this point, in words with units; or, when none qualifies, what came closest."""
    usable = [p for p in points if not p.get("failed") and not p["errors"] and p["ok"] > 0 and "p99" in p["latency_ms"]]
    excluded = len(points) - len(usable)
    if chosen is None:
        if not usable:
            failed = next((p for p in points if p.get("failed")), None)
            reason = f"; first failure: {failed['label']}: {failed['failed']}" if failed else \
                f"; errors, e.g. {points[0]['label']}: {points[0]['errors']}" if points else ""
            return f"no point was measured without errors ({len(points)} tried){reason}; nothing written"
        closest = min(usable, key=lambda p: p["latency_ms"]["p99"])
        return (f"no setting met the p99 budget of {budget_ms:g} ms: the best p99 seen was "
                f"{closest['latency_ms']['p99']:.2f} ms ({closest['label']}, {closest['throughput_rps']:.0f} req/s); "
                f"{len(usable)} points measured without errors; nothing written (raise --p99-budget-ms, lower the "
                "load, or try other settings)")
    c, cs = chosen, chosen["settings"]
    text = (f"chose {c['label']}: {c['throughput_rps']:.0f} req/s ({c['rows_per_s']:.0f} rows/s) at p50 "
            f"{_fig(c, 'p50'):.2f} ms, p99 {_fig(c, 'p99'):.2f} ms" +
            (f" (budget {budget_ms:g} ms)" if budget_ms > 0 else "") + f", using {cs['cores']} core(s). ")
    qualifier = " meeting the budget" if budget_ms > 0 else ""
    if c is best:
        text += f"It is the highest throughput{qualifier} of the {len(points)} points measured"
        if len(ties) > 1:
            text += f" ({len(ties) - 1} other(s) within its measured noise used as many cores or more)"
    elif c["throughput_rps"] >= best["throughput_rps"]:
        text += (f"It ties the highest throughput{qualifier} ({best['label']}, {best['settings']['cores']} cores, "
                 f"p99 {_fig(best, 'p99'):.2f} ms); the tie went to fewer cores, then lower p99")
    else:
        noise = 100 * max(best["noise"] or 0, c["noise"] or 0)
        text += (f"The highest throughput{qualifier} was {best['throughput_rps']:.0f} req/s ({best['label']}, "
                 f"{best['settings']['cores']} cores, p99 {_fig(best, 'p99'):.2f} ms); this point lies within the "
                 f"measured window-to-window noise of it ({noise:.1f}%), so the tie went to fewer cores, then "
                 "lower p99")
    if default is not c and default.get("throughput_rps"):
        ratio = c["throughput_rps"] / default["throughput_rps"]
        noise = max(c["noise"] or 0, default["noise"] or 0)
        text += (f". The current config ({default['label']}, {default['settings']['cores']} cores) gave "
                 f"{default['throughput_rps']:.0f} req/s at p99 {_fig(default, 'p99'):.2f} ms in the same run: "
                 f"{ratio:.2f}x its throughput" +
                 (f", within the measured noise ({100 * noise:.1f}%)" if abs(ratio - 1) <= noise else ""))
    elif default is c:
        text += ". It is the current config"
    over = [p for p in usable if budget_ms > 0 and p["latency_ms"]["p99"] > budget_ms]
    notes = ([f"{excluded} point(s) excluded for errors or failures"] if excluded else []) + \
        ([f"{len(over)} over the p99 budget"] if over else []) + \
        ([f"{sum(not p['stable'] for p in usable)} point(s) whose windows never agreed within tolerance"]
         if any(not p["stable"] for p in usable) else [])
    return text + (" (" + "; ".join(notes) + ")" if notes else "") + "."


def build(*, model, repository, version, load, search, budget_ms, cores, axes, points, default, chosen, ties,
          best, dry_run) -> dict:
    plain = [p for _, p in points]
    tied = {id(p) for p in ties}
    rows = []
    for i, p in enumerate(plain, 1):
        meets = "p99" in p["latency_ms"] and (budget_ms <= 0 or p["latency_ms"]["p99"] <= budget_ms)
        rows.append({**p, "index": i, "default": p is default, "chosen": p is chosen, "tied_with_best": id(p) in tied,
                     "meets_budget": meets and not p["errors"] and not p.get("failed")})
    report = {
        "model": model, "repository": repository, "version": version, "search": search,
        "load": load.as_dict(), "p99_budget_ms": budget_ms or None, "cores": cores,
        "grid": {k: [list(v) if isinstance(v, tuple) else v for v in vs] for k, vs in axes.items()},
        "machine": _machine(cores), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dry_run": dry_run, "points": rows,
        "default": next(r for r in rows if r["default"]),
        "chosen": next((r for r in rows if r["chosen"]), None),
        "best_throughput": next((rows[i] for i, p in enumerate(plain) if p is best), None),
        "why": explain(plain, default, chosen, ties, best, budget_ms),
    }
    if chosen is not None and default.get("throughput_rps"):
        report["vs_default"] = {"throughput_ratio": chosen["throughput_rps"] / default["throughput_rps"],
                                "default_p99_ms": default["latency_ms"].get("p99"),
                                "chosen_p99_ms": chosen["latency_ms"].get("p99"),
                                "noise": max(chosen["noise"] or 0, default["noise"] or 0)}
    return report


def markdown(report: dict) -> str:
    load, m = report["load"], report["machine"]
    level = f"concurrency {load['level']}" if load["mode"] == "concurrency" else \
        f"{load['level']:g} requests/s, {load['arrivals']} arrivals"
    lines = [f"# tune-serving: {report['model']} (version {report['version']})", "",
             f"- load: {level}, batch {load['batch']}, {load['duration_s']:g} s per point in {load['windows']} windows "
             f"(up to {load['max_windows']}, agreeing within {100 * load['tolerance']:.0f}%), "
             f"{load['warmup_s']:g} s warm-up; {report['search']} search",
             f"- p99 budget: {report['p99_budget_ms']:g} ms" if report["p99_budget_ms"] else "- p99 budget: none",
             f"- machine: {m.get('cpu_model')}, {report['cores']} usable cores, flags "
             f"{' '.join(m.get('cpu_flags', []))}; onnxruntime {m.get('versions', {}).get('onnxruntime', '?')}",
             f"- {report['date']}", "", f"**{report['why']}**", "", f"Config: {report.get('write_note', '')}", "",
             "| # | instances | threads | cores | delay us | preferred | req/s | rows/s | p50 ms | p95 ms | p99 ms "
             "| errors | windows | stable | noise | note |", "|" + "---|" * 16]
    for r in report["points"]:
        s, lat = r["settings"], r["latency_ms"]
        note = ", ".join([n for n, on in (("default", r["default"]), ("**chosen**", r["chosen"]),
                                          ("tied with best", r["tied_with_best"] and not r["chosen"]),
                                          ("over budget", "p99" in lat and not r["meets_budget"] and not r["errors"]),
                                          ("failed: " + str(r.get("failed"))[:80], bool(r.get("failed")))) if on])
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        delay = "no batching" if s["max_queue_delay_us"] is None else s["max_queue_delay_us"]
        lines.append("| " + " | ".join(str(c) for c in [
            r["index"], s["instances"], s["threads"], s["cores"], delay,
            ",".join(map(str, s["preferred_batch_sizes"])) or "-", f"{r['throughput_rps']:.0f}",
            f"{r['rows_per_s']:.0f}", *(f"{lat.get(k, float('nan')):.2f}" for k in ("p50", "p95", "p99")), errors,
            len(r["windows"]), "yes" if r["stable"] else "no",
            f"{100 * r['noise']:.1f}%" if r["noise"] is not None else "-", note]) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """p99 against throughput, one marker per point (window range as a horizontal bar); the default
    config a square, the chosen point a star, the budget a dashed line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in report["points"]:
        if "p99" not in r["latency_ms"]:
            continue
        x, y = r["throughput_rps"], r["latency_ms"]["p99"]
        win = [w["throughput_rps"] for w in r["windows"][slice(*r["pooled_windows"])]] or [x]
        style = dict(marker="*", color="tab:red", markersize=16, zorder=4) if r["chosen"] else \
            dict(marker="s", color="tab:blue", markersize=9, zorder=3) if r["default"] else \
            dict(marker="o", color="tab:red" if r["errors"] else "0.45", markersize=6, zorder=2)
        xerr = [[max(0.0, x - min(win))], [max(0.0, max(win) - x)]]
        ax.errorbar([x], [y], xerr=xerr, linestyle="none", capsize=2, **style)
        ax.annotate(str(r["index"]), (x, y), fontsize=7, textcoords="offset points", xytext=(4, 4))
    handles = [plt.Line2D([], [], marker="*", color="tab:red", linestyle="none", markersize=12, label="chosen"),
               plt.Line2D([], [], marker="s", color="tab:blue", linestyle="none", label="current config"),
               plt.Line2D([], [], marker="o", color="0.45", linestyle="none",
                          label="other settings (# as in the table)")]
    if report["p99_budget_ms"]:
        ax.axhline(report["p99_budget_ms"], color="tab:orange", linestyle="--")
        handles.append(plt.Line2D([], [], color="tab:orange", linestyle="--",
                                  label=f"p99 budget {report['p99_budget_ms']:g} ms"))
    load = report["load"]
    ax.set_title(f"{report['model']}: p99 vs throughput, {load['mode']} {load['level']:g}", fontsize=10)
    ax.set_xlabel("throughput (requests/s; bar: window range)")
    ax.set_ylabel("p99 latency (ms)")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict, folder: Path) -> dict:
    """tuning.json, tuning.md and tuning.png in `folder` (each written whole); returns their paths."""
    from modelpress.core.fileio import write_json_atomic, write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    files = {"json": str(folder / "tuning.json"), "markdown": str(folder / "tuning.md"),
             "plot": str(folder / "tuning.png")}
    png_tmp = folder / ".tuning.png.tmp.png"
    plot(report, png_tmp)
    os.replace(png_tmp, files["plot"])
    write_text_atomic(files["markdown"], markdown(report))
    write_json_atomic(files["json"], {**report, "files": files})
    return files
