"""The export-edge step: the selected ONNX model in ONNX Runtime's ORT format with its
required-operators config (`export.edge`), checked against the ONNX model on the test split and
measured beside it in the same run: file size, session load time and batch-1 latency.

It lives here rather than in `export` because the latency comes from `benchmarking`'s interleaved
windows and stability rule, the figures the rest of selection trusts.
"""

from __future__ import annotations

import shutil
import time
from typing import Callable

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic, write_text_atomic
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.timing import timed
from modelpress.data.dataset import load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.export import edge, runtime
from modelpress.selection import benchmarking
from modelpress.selection.report import stability_label

FORMATS = {"onnx": runtime.ONNX_FILE, "ort": edge.ORT_FILE}


@timed
def export_edge(model_dir: str, dataset_dir: str, out_dir: str, *, threads: int = 1, window_seconds: float = 0.5,
                max_windows: int = 10, load_repeats: int = 10, target_platform: str = "",
                type_reduction: bool = False, atol: float = 1e-5, rtol: float = 1e-5,
                table_path: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Write ``model.onnx``, ``model.ort``, the required-operators config and ``meta.json`` (the
    model card plus the measurements under ``edge``) to `out_dir` atomically; `table_path`: the
    figures as Markdown too."""
    if is_text_dataset(dataset_dir):
        raise ModelpressError("export-edge takes models of feature or image datasets; a text classifier's "
                              "token inputs are not measured yet: leave edge_export off for text runs")
    if threads < 1 or max_windows < 1 or window_seconds <= 0:
        raise ModelpressError(f"threads and max_windows must be >= 1 and window_seconds > 0, got {threads}, "
                              f"{max_windows}, {window_seconds}")
    source = runtime.onnx_file(model_dir)
    meta_in = runtime.read_meta(model_dir)
    ds = load_dataset(dataset_dir)
    t0 = time.perf_counter()
    with atomic_dir(local_path(out_dir)) as tmp:
        shutil.copyfile(source, tmp / runtime.ONNX_FILE)
        conv = edge.convert(tmp / runtime.ONNX_FILE, tmp, target_platform=target_platform,
                            type_reduction=type_reduction)
        files = {k: tmp / name for k, name in FORMATS.items()}
        sessions = {k: runtime.session(p, threads) for k, p in files.items()}
        outputs = {k: runtime.run_logits(s, ds.test.x) for k, s in sessions.items()}
        checked = edge.compare(outputs["onnx"], outputs["ort"], task=ds.task, atol=atol, rtol=rtol,
                               precision=meta_in.get("precision") or "fp32")
        loads = edge.load_seconds(files, repeats=load_repeats, threads=threads)
        latency = benchmarking.measure_windows({k: benchmarking.onnx_runner(s) for k, s in sessions.items()},
                                               ds.test.x[:1], window_seconds=window_seconds,
                                               max_windows=max_windows, log=log)
        figures = {k: {**benchmarking.file_sizes(p), "load_ms": 1e3 * loads[k],
                       "latency_ms": {q: latency[k][q] for q in ("p50", "p95", "stable", "spread", "n")}}
                   for k, p in files.items()}
        info = {"files": {**FORMATS, "config": conv["config_path"].name}, "operators": conv["operators"],
                "target_platform": target_platform or "any", "type_reduction": type_reduction,
                "verification": checked, "batch_size": 1, "load_repeats": load_repeats, **figures,
                "machine": benchmarking.machine(threads)}
        card = ModelCard.from_metadata(meta_in).evolve(extra={"edge": info})
        write_json_atomic(tmp / runtime.META_FILE, card.file_metadata())
    seconds = time.perf_counter() - t0
    on, ort_ = figures["onnx"], figures["ort"]
    log(f"[export-edge] {edge.ORT_FILE}: {ort_['size_bytes'] / 1e3:.1f} kB (onnx {on['size_bytes'] / 1e3:.1f} kB), "
        f"load {ort_['load_ms']:.2f} ms (onnx {on['load_ms']:.2f}), p50 {ort_['latency_ms']['p50']:.4g} ms "
        f"(onnx {on['latency_ms']['p50']:.4g}), max abs diff {checked['max_abs_diff']:.2e} on "
        f"{checked['rows']} test rows, {sum(map(len, conv['operators'].values()))} operators, {seconds:.1f}s")
    if table_path:
        write_text_atomic(local_path(table_path), markdown(info))
    metrics = {"size_bytes": ort_["size_bytes"], "max_abs_diff": checked["max_abs_diff"],
               "operators": sum(map(len, conv["operators"].values())), "export_seconds": seconds}
    for k, f in figures.items():
        metrics.update({f"{k}_size_bytes": f["size_bytes"], f"{k}_load_ms": f["load_ms"],
                        f"{k}_p50_ms": f["latency_ms"]["p50"], f"{k}_p95_ms": f["latency_ms"]["p95"]})
    metrics["size_ratio"] = ort_["size_bytes"] / on["size_bytes"]
    if "argmax_agreement" in checked:
        metrics["argmax_agreement"] = checked["argmax_agreement"]
    return StepResult(card, metrics).as_dict()


def markdown(info: dict) -> str:
    """The edge artifact's figures as a Markdown table, with what was checked and on which machine."""
    v, m = info["verification"], info["machine"]
    lines = ["## Edge export: ORT format vs ONNX", "",
             f"| file | size (kB) | gzip (kB) | load (ms, median of {info['load_repeats']}) | p50 (ms) | p95 (ms) |",
             "|---|---:|---:|---:|---:|---:|"]
    for k in FORMATS:
        f = info[k]
        lat = f["latency_ms"]
        lines.append(f"| {info['files'][k]} | {f['size_bytes'] / 1e3:.1f} | {f['gzip_bytes'] / 1e3:.1f} | "
                     f"{f['load_ms']:.2f} | {lat['p50']:.4g}{stability_label(f)} | {lat['p95']:.4g} |")
    ops = "; ".join(f"{d or 'ai.onnx'}: {', '.join(o)}" for d, o in info["operators"].items())
    agree = f", class agreement {v['argmax_agreement']:.4f}" if "argmax_agreement" in v else ""
    lines += ["", f"Batch 1, {m['threads']} thread(s), {m['cpu_model']}, ONNX Runtime {m['versions']['onnxruntime']}, "
                  f"target platform {info['target_platform']}.",
              f"Checked: {v['compared']} on {v['rows']} test rows, max abs diff {v['max_abs_diff']:.2e} "
              f"(tolerance {v['atol']:g} + {v['rtol']:g} * |onnx|){agree}.",
              f"Operators for a reduced build ({info['files']['config']}): {ops}.", ""]
    return "\n".join(lines)


def summary_lines(metrics: dict | None) -> list[str]:
    """The run summary's edge line, from the export-edge step's metrics (nothing when it did not run)."""
    if not metrics or "ort_size_bytes" not in metrics:
        return []
    kb = {k: metrics[f"{k}_size_bytes"] / 1e3 for k in FORMATS}
    return [f"  edge (ORT format): {kb['ort']:.1f} kB vs {kb['onnx']:.1f} kB onnx, load "
            f"{metrics['ort_load_ms']:.2f} vs {metrics['onnx_load_ms']:.2f} ms, p50 {metrics['ort_p50_ms']:.4g} vs "
            f"{metrics['onnx_p50_ms']:.4g} ms (batch 1), max abs diff {metrics['max_abs_diff']:.1e}"]
