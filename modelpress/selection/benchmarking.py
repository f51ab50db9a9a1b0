"""Latency and throughput measurement, done so that the figures can be trusted on noisy machines.

Variants are measured interleaved (A B C A B C ...) so that drift hits them alike; latency
comes as percentiles over per-call samples after a warm-up; thread counts are fixed and
recorded with the machine's CPU flags and library versions.
"""

from __future__ import annotations

import gzip
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from modelpress.core.hardware import cpu_flags, cpu_model

Runner = Callable[[np.ndarray], object]


def percentiles(samples_ms) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"p50": None, "p90": None, "p95": None, "p99": None, "mean": None, "n": 0}
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return {"p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99),
            "mean": float(a.mean()), "n": int(a.size)}


def onnx_runner(sess) -> Runner:
    """Time `sess.run` itself: the session is the caller's (also used to score accuracy)."""
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def torch_runner(model, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)
    model.eval()

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x))
    return run


def measure_latency(runners: dict[str, Runner], x: np.ndarray, *, rounds: int = 10,
                    iters: int = 20, warmup: int = 10, log: Callable[[str], None] = print) -> dict:
    """Per-call latency (ms) for each runner, interleaved round by round."""
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(rounds):
        for name, run in runners.items():
            for _ in range(iters):
                t0 = time.perf_counter_ns()
                run(x)
                samples[name].append((time.perf_counter_ns() - t0) / 1e6)
        if log and (r + 1) % max(1, rounds // 5) == 0:
            log(f"[bench] latency round {r + 1}/{rounds}")
    return {k: {**percentiles(v), "samples_ms": v} for k, v in samples.items()}


def measure_throughput(runners: dict[str, Runner], x: np.ndarray, *, rounds: int = 5,
                       iters: int = 5, min_seconds: float = 0.2) -> dict:
    """Rows per second at batch len(x): the median over interleaved rounds.

    A round is at least `iters` calls and at least `min_seconds` long, so that sub-millisecond
    models are timed over many calls rather than a handful.
    """
    for run in runners.values():
        run(x)
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            calls = 0
            t0 = time.perf_counter()
            while calls < iters or time.perf_counter() - t0 < min_seconds:
                run(x)
                calls += 1
            rates[name].append(len(x) * calls / (time.perf_counter() - t0))
    return {k: float(np.median(v)) for k, v in rates.items()}


def sha256(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sizes(path) -> dict:
    data = Path(path).read_bytes()
    return {"size_bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9))}


def machine(threads: int) -> dict:
    import onnx
    import onnxruntime as ort
    import torch

    flags = cpu_flags()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "threads": threads,
        "cpu_flags": [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4"))],
        "vnni": bool(set(flags) & {"avx512_vnni", "avx_vnni"}), "gpu": gpu,
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__,
                     "onnx": onnx.__version__, "numpy": np.__version__},
        "ort_providers": ort.get_available_providers(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(json_path: str | os.PathLike, doc: dict, markdown: str) -> Path:
    """A benchmark's results: JSON at `json_path`, Markdown beside it (both atomic); prints
    the Markdown and returns its path."""
    from modelpress.core.fileio import write_json_atomic, write_text_atomic

    md_path = Path(json_path).with_suffix(".md")
    write_json_atomic(json_path, doc)
    write_text_atomic(md_path, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")
    return md_path


def _agree(values: list[float], tolerance: float) -> bool:
    lo, hi = min(values), max(values)
    return lo > 0 and (hi - lo) / lo <= tolerance


def is_stable(windows: list[tuple[float, float]], stable_windows: int = 3, tolerance: float = 0.10) -> bool:
    """perf_analyzer's rule over (p50 latency, throughput) per window: the last
    `stable_windows` windows agree within `tolerance` on both."""
    if len(windows) < stable_windows:
        return False
    last = windows[-stable_windows:]
    return _agree([p for p, _ in last], tolerance) and _agree([t for _, t in last], tolerance)


def spread(values: list[float]) -> float:
    """(max - min) / min: how far apart a run of window figures lies."""
    lo = min(values)
    return (max(values) - lo) / lo if lo > 0 else float("inf")


def best_run(windows: list[tuple[float, float]], stable_windows: int = 3,
             tolerance: float = 0.10) -> tuple[int, bool, float]:
    """The run of `stable_windows` consecutive windows to report: the latest stable one, else the
    one whose p50s agree best. Returns (first window, stable, p50 spread).

    A window disturbed by something else on the machine (another process, a page-cache flush)
    then costs a retry rather than the figure: it is left out of a later stable run.
    """
    k = min(stable_windows, len(windows))
    starts = range(len(windows) - k + 1)
    stable = [i for i in starts if len(windows) >= stable_windows and is_stable(windows[i:i + k], k, tolerance)]
    if stable:
        i = stable[-1]
        return i, True, spread([p for p, _ in windows[i:i + k]])
    i = min(starts, key=lambda j: spread([p for p, _ in windows[j:j + k]]))
    return i, False, spread([p for p, _ in windows[i:i + k]])


def measure_windows(runners: dict[str, Runner], x: np.ndarray, *, window_seconds: float = 0.5,
                    max_windows: int = 10, stable_windows: int = 3, tolerance: float = 0.10,
                    warmup: int = 10, settle_seconds: float = 0.01,
                    log: Callable[[str], None] | None = print) -> dict:
    """Latency in measurement windows, variants interleaved window by window.

    The stability rule follows Triton's perf_analyzer: a variant is stable when
    `stable_windows` consecutive windows agree within `tolerance` on both p50 latency and
    throughput. Windows continue, for all variants alike, until every variant has such a run
    or `max_windows` is reached (the budget); the figures pool the samples of the latest
    stable run (else of the run that agrees best) and a `stable` flag and the run's `spread`
    are recorded rather than failing. Before each window the machine idles `settle_seconds`,
    so the previous runtime's spinning worker threads (ONNX Runtime's pool, OpenMP's) park
    instead of competing with the next one for the cores.
    """
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    windows: dict[str, list[list[float]]] = {k: [] for k in runners}
    summary: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    for w in range(max_windows):
        for name, run in runners.items():
            time.sleep(settle_seconds)
            run(x)  # one untimed call: the first after a pause pays for waking the pool
            samples = []
            start = time.perf_counter()
            while True:
                t0 = time.perf_counter_ns()
                run(x)
                samples.append((time.perf_counter_ns() - t0) / 1e6)
                if time.perf_counter() - start >= window_seconds and len(samples) >= 5:
                    break
            elapsed = time.perf_counter() - start
            windows[name].append(samples)
            summary[name].append((float(np.median(samples)), len(samples) / elapsed))
        runs = {k: best_run(v, stable_windows, tolerance) for k, v in summary.items()}
        stable = sum(r[1] for r in runs.values())
        if log:
            log(f"[bench] window {w + 1}/{max_windows}: {stable}/{len(runs)} variants stable")
        if stable == len(runs):
            break
    out = {}
    for name, ws in windows.items():
        first, stable, p50_spread = runs[name]
        pooled = [s for win in ws[first:first + stable_windows] for s in win]
        out[name] = {**percentiles(pooled), "stable": stable, "spread": p50_spread, "windows": len(ws),
                     "pooled_windows": [first, min(first + stable_windows, len(ws))],
                     "window_p50_ms": [p for p, _ in summary[name]]}
    return out
