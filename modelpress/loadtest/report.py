"""The load generator's results: one row per level, as a Markdown table, JSON and a plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class LevelResult:
    mode: str                  # "concurrency" | "rate"
    level: float               # clients, or requests per second
    batch: int
    requests: int              # completed in the measurement window
    ok: int
    errors: dict = field(default_factory=dict)   # HTTP status or gRPC code name (0 = no answer) -> count
    seconds: float = 0.0
    throughput_rps: float = 0.0                  # successful requests per second
    rows_per_s: float = 0.0
    latency_ms: dict = field(default_factory=dict)  # p50 p90 p95 p99 mean max over successful requests
    late_sends: int = 0        # open loop: requests sent > 1 ms after they were due (client saturated)


def latency_summary(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    ms = np.asarray(seconds) * 1e3
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {"p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99),
            "mean": float(ms.mean()), "max": float(ms.max()), "n": int(ms.size)}


HEADER = "| mode | level | batch | ok | errors | req/s | rows/s | p50 ms | p90 ms | p95 ms | p99 ms |"


def format_row(r: LevelResult, label: str | None = None) -> str:
    lat = r.latency_ms or {}
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0"
    cells = [label or r.mode, f"{r.level:g}", r.batch, r.ok, errors, f"{r.throughput_rps:.0f}", f"{r.rows_per_s:.0f}",
             *(f"{lat.get(k, float('nan')):.2f}" for k in ("p50", "p90", "p95", "p99"))]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(results: list[LevelResult], labels: list[str] | None = None) -> str:
    sep = "|" + "---|" * (HEADER.count("|") - 1)
    rows = [format_row(r, labels[i] if labels else None) for i, r in enumerate(results)]
    return "\n".join([HEADER, sep, *rows])


def to_json(results: list[LevelResult]) -> list[dict]:
    return [asdict(r) for r in results]


def plot(series: dict[str, list[LevelResult]], path: str) -> None:
    """Latency (p50 and p99) against throughput, one line per series."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, results in series.items():
        pts = [r for r in results if r.latency_ms]
        x = [r.rows_per_s for r in pts]
        line, = ax.plot(x, [r.latency_ms["p50"] for r in pts], marker="o", label=f"{name} p50")
        ax.plot(x, [r.latency_ms["p99"] for r in pts], marker="x", linestyle="--", color=line.get_color(),
                label=f"{name} p99")
        for r in pts:
            ax.annotate(f"{r.level:g}", (r.rows_per_s, r.latency_ms["p50"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("throughput (rows/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
