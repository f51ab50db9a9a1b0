"""Benchmark a set of model variants side by side on the same test split.

Every variant is scored on the dataset artifact's test split with the task's scores
(accuracy; or RMSE, MAE and R² for regression), sized on disk, and timed at batch 1
(measurement windows with a stability rule, variants interleaved) and at a throughput
batch. ONNX variants run in ONNX Runtime on the CPU; the torch eager fp32 model is the
baseline, or with no torch model (an ONNX start) the ONNX fp32 export. Variants whose
step the recipe left out (a skipped output folder) are left out, and the results say so.
With a CUDA GPU, torch on cuda (fp32, fp16, torch.compile with
CUDA graphs) is measured too, and the ONNX Runtime CUDA provider when this build has it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from modelpress.selection import benchmarking
from modelpress import models
from modelpress.deploy import repository
from modelpress.export import runtime
from modelpress.data.dataset import dataset_task, load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, write_json_atomic, write_text_atomic
from modelpress.core.hardware import cpu_flags
from modelpress.core.results import Role, StepResult, Variant, skipped
from modelpress.selection import quality
from modelpress.selection.report import render_html, stability_label
from modelpress.models.flops import forward_flops
from modelpress.evaluation import quality_metric, score_outputs
from modelpress.evaluation.torch_scoring import predict_logits

FLOPS_PER_CYCLE = {"avx512f": 64, "avx2": 32, "avx": 16}  # fp32, two FMA units per core


def cpu_peak_flops(threads: int) -> dict | None:
    """Theoretical fp32 peak: threads x clock x FLOPs/cycle (assumes two FMA units)."""
    flags = set(cpu_flags())
    per_cycle = next((v for k, v in FLOPS_PER_CYCLE.items() if k in flags), None)
    try:
        mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return None
    if not per_cycle:
        return None
    return {"flops_per_s": threads * mhz * 1e6 * per_cycle, "mhz": mhz, "flops_per_cycle": per_cycle,
            "assumption": "threads x max cpu MHz x FLOPs/cycle (2 FMA units, fp32)"}


def _variant_file(v: Variant) -> Path:
    p = local_path(v.path)
    return p / models.WEIGHTS_FILE if v.kind == "torch" else runtime.onnx_file(p)


def deployed_champion(champion_repository: str, model_name: str) -> Path | None:
    """The latest deployed version folder of `model_name` ("" repository or none deployed: None)."""
    return repository.latest(champion_repository, model_name) if champion_repository else None


ABSOLUTE_BAR = {"classification": "the accuracy floor", "regression": "the RMSE ceiling"}


def with_champion(variants: list, champion_repository: str, model_name: str, *,
                  log: Callable[[str], None] = print, label: str = "benchmark",
                  task: str = "classification") -> list[Variant]:
    """`variants` and, when `model_name` is deployed in `champion_repository`, its latest version
    in the champion role: the optimise and retraining runs measure it beside their candidates."""
    out = [Variant.of(v) for v in variants]
    champion = deployed_champion(champion_repository, model_name)
    if champion is None:
        log(f"[{label}] no champion {model_name!r} in {champion_repository or '(no repository)'}: "
            f"{ABSOLUTE_BAR.get(task, 'the absolute bar')} alone decides")
        return out
    return [*out, Variant(f"champion v{champion.name}", str(champion), "onnx", Role.CHAMPION)]


def optimisation_variants(torch_model: str | None, onnx_model: str, pruned_onnx: str | None = None,
                          student_onnx: str | None = None, quantised=(), quantised_pruned=(),
                          quantised_student=(), qat_onnx: str | None = None) -> list[Variant]:
    """The optimise run's variants: both fp32 baselines, the pruned and distilled exports, the
    quantisation-aware trained model, and each quantised model of each, named by its method
    ("pruned static-int8"). A quantised model
    is a (path, artifact metadata) pair; its metadata names the method.

    A path that is None or "" is no variant (no torch model: the run started from ONNX). A
    skipped output folder (the recipe left its step out) stays in the list: `benchmark`
    leaves it out and says so, in the log and in the results."""
    variants = [Variant(name, path, kind, role) for name, path, kind, role in (
        ("torch eager fp32", torch_model, "torch", Role.BASELINE),
        ("onnx fp32", onnx_model, "onnx", Role.BASELINE_ONNX),
        ("pruned fp32", pruned_onnx, "onnx", Role.CANDIDATE),
        ("student fp32", student_onnx, "onnx", Role.CANDIDATE),
        ("qat int8", qat_onnx, "onnx", Role.CANDIDATE)) if path]
    for prefix, group in (("", quantised), ("pruned ", quantised_pruned), ("student ", quantised_student)):
        for i, (path, metadata) in enumerate(group):
            metadata = dict(metadata or {})
            method = (metadata.get("quantisation") or {}).get("method")
            if method is None:  # a skipped step's folder names no method; keep the names unique
                method = f"quantised {i + 1}" if len(group) > 1 else "quantised"
            variants.append(Variant(f"{prefix}{method}".strip(), path, "onnx", metadata=metadata))
    return variants


def present(variants: list, log: Callable[[str], None] = print) -> tuple[list[Variant], list[dict]]:
    """(the variants to measure, the ones left out): a variant whose folder is a skipped step's
    output is left out, one log line per step and reason naming them."""
    kept, left_out = [], []
    for v in (Variant.of(v) for v in variants):
        note = skipped(v.path)
        if note is None:
            kept.append(v)
        else:
            left_out.append({"name": v.name, "step": note.get("step"), "reason": note.get("reason")})
    groups: dict[tuple, list[str]] = {}
    for item in left_out:
        groups.setdefault((item["step"], item["reason"]), []).append(item["name"])
    for (step, reason), names in groups.items():
        log(f"[benchmark] left out {', '.join(names)}: the {step} step was skipped ({reason})")
    return kept, left_out


def summary(results: dict, figures: dict) -> dict:
    """A benchmark step's record: the variants' names on the artifact, the step's figures as metrics."""
    return StepResult(metadata={"variants": [r["name"] for r in results["variants"]]},
                      metrics={"work_seconds": results["work_seconds"], **figures}).as_dict()


def benchmark_optimisation(variants: list, dataset_dir: str, out_json: str, report_html: str, *,
                           champion_repository: str = "", model_name: str = "digits", threads: int = 2,
                           throughput_batch: int = 64, window_seconds: float = 0.5, max_windows: int = 10,
                           log: Callable[[str], None] = print) -> dict:
    """The optimise run's benchmark step: `variants` and the deployed champion measured, the
    results JSON and the HTML report written; returns the step's record (p50 and the quality
    metric, accuracy or rmse, per measured variant)."""
    task = dataset_task(dataset_dir)
    results = benchmark(with_champion(variants, champion_repository, model_name, log=log, task=task), dataset_dir,
                        out_json, threads=threads, throughput_batch=throughput_batch,
                        window_seconds=window_seconds, max_windows=max_windows, log=log)
    write_text_atomic(report_html, render_html(results, title="modelpress benchmark"))
    figures = {"variants": len(results["variants"])}
    metric = quality.metric_of(results).name
    for row in results["variants"]:
        if row.get("latency_ms"):
            key = row["name"].replace(" ", "_").replace("-", "_")
            figures[f"{key}_p50_ms"] = row["latency_ms"]["p50"]
            figures[f"{key}_{metric}"] = row[metric]
    return summary(results, figures)


def _gpu_runners(model, x1: np.ndarray, log) -> dict:
    """torch on cuda: eager fp32, eager fp16, and torch.compile with CUDA graphs."""
    import torch

    runners = {}
    dev = torch.device("cuda")
    m32 = models.build(model["spec"]).to(dev).eval()
    m32.load_state_dict(model["state"])
    m16 = models.build(model["spec"]).to(dev).half().eval()
    m16.load_state_dict({k: v.half() if v.is_floating_point() else v for k, v in model["state"].items()})

    def make(m, dtype):
        def run(x):
            with torch.inference_mode():
                out = m(torch.from_numpy(x).to(dev, dtype))
                torch.cuda.synchronize()
                return out
        return run
    runners["torch cuda fp32"] = make(m32, torch.float32)
    runners["torch cuda fp16"] = make(m16, torch.float16)
    try:
        t0 = time.perf_counter()
        compiled = torch.compile(m32, mode="reduce-overhead")
        run = make(compiled, torch.float32)
        for _ in range(3):
            run(x1)
        log(f"[benchmark] torch.compile (reduce-overhead) took {time.perf_counter() - t0:.1f}s")
        runners["torch cuda compiled fp32"] = run
    except Exception as exc:  # compile support varies by platform; report, don't fail
        log(f"[benchmark] torch.compile unavailable: {type(exc).__name__}: {exc}")
    return runners


def benchmark(variants: list, dataset_dir: str, out_json: str, *, threads: int = 2,
              throughput_batch: int = 64, window_seconds: float = 0.5, max_windows: int = 10,
              log: Callable[[str], None] = print) -> dict:
    """Measure `variants` (`Variant`s, or their dicts {name, path, kind: torch|onnx, role}) and
    write every figure to JSON."""
    import onnxruntime as ort
    import torch

    variants, left_out = present(variants, log)
    if not variants:
        raise ModelpressError("nothing to benchmark: the variant list is empty"
                              + (" (every variant's step was skipped)" if left_out else ""))
    if not any(v.role == Role.BASELINE for v in variants):
        log(f"[benchmark] {quality.NO_TORCH}: the ONNX fp32 export sets the quality bar and is the latency reference")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ModelpressError(f"variant names must be unique, got {names}")
    if is_text_dataset(dataset_dir):
        from modelpress.selection.text_benchmark import benchmark_text

        return benchmark_text(variants, dataset_dir, out_json, threads=threads, window_seconds=window_seconds,
                              max_windows=max_windows, left_out=left_out, log=log)
    t_start = time.perf_counter()
    ds = load_dataset(dataset_dir)
    task, metric = ds.task, quality_metric(ds.task)
    unscored = dict.fromkeys(quality.score_names(task))  # a row that could not run: every score None
    torch.set_num_threads(threads)
    rows, runners, gpu_source = [], {}, None
    for v in variants:
        file = _variant_file(v)
        row = {"name": v.name, "role": v.role.value, "kind": v.kind, "task": task,
               "path": str(local_path(v.path)), "file": str(file), "sha256": benchmarking.sha256(file),
               **benchmarking.file_sizes(file), "runtime": None, "note": None}
        meta = dict(v.metadata or {})
        if v.kind == "torch":
            model, spec = models.load_model(str(v.path))
            runner = benchmarking.torch_runner(model, threads)
            logits = predict_logits(model, ds.test.x)
            row.update(params=models.count_params(model), macs=forward_flops(model, ds.feature_shape) // 2,
                       precision="fp32", runtime=f"torch {torch.__version__} eager CPU")
            if v.role == Role.BASELINE:
                gpu_source = {"spec": spec, "state": model.state_dict()}
        else:
            onnx_meta = {**runtime.read_meta(v.path), **meta}
            row.update(params=onnx_meta.get("params"), macs=onnx_meta.get("macs"),
                       precision=onnx_meta.get("precision", "fp32"),
                       runtime=f"onnxruntime {ort.__version__} CPUExecutionProvider")
            try:
                sess = runtime.session(v.path, threads=threads)
                logits = runtime.run_logits(sess, ds.test.x)
                runner = benchmarking.onnx_runner(sess)
            except ModelpressError as exc:
                row["note"] = f"not runnable with this ONNX Runtime on the CPU: {str(exc)[:200]}"
                rows.append({**row, **unscored, "latency_ms": None, "throughput_per_s": None})
                log(f"[benchmark] {v.name}: {row['note']}")
                continue
        try:
            scores = score_outputs(logits, ds.test.y, task, ds.num_outputs)
        except ModelpressError as exc:  # e.g. a champion deployed for another task: noted, never chosen
            row["note"] = f"cannot be scored on this {task} dataset: {str(exc)[:200]}"
            rows.append({**row, **unscored, "latency_ms": None, "throughput_per_s": None})
            log(f"[benchmark] {v.name}: {row['note']}")
            continue
        row.update({k: scores[k] for k in quality.score_names(task)})
        if "confusion_matrix" in scores:
            row["confusion_matrix"] = scores["confusion_matrix"]
        runners[v.name] = runner
        rows.append(row)
    log(f"[benchmark] {len(runners)} variants on the CPU with {threads} thread(s): batch-1 latency in "
        f"{window_seconds}s windows (stable: 3 consecutive windows within 10%, at most {max_windows})")
    x1 = np.ascontiguousarray(ds.test.x[:1])
    lat = benchmarking.measure_windows(runners, x1, window_seconds=window_seconds,
                                       max_windows=max_windows, log=log)
    xb = np.ascontiguousarray(np.resize(ds.test.x, (throughput_batch, *ds.test.x.shape[1:])))
    thr = benchmarking.measure_throughput(runners, xb, rounds=3, iters=3)
    peak = cpu_peak_flops(threads)
    for row in rows:
        if row["name"] not in lat:
            continue
        stats = {k: v for k, v in lat[row["name"]].items() if k != "window_p50_ms"}
        row["latency_ms"] = stats
        row["window_p50_ms"] = lat[row["name"]]["window_p50_ms"]
        row["throughput_per_s"] = thr[row["name"]]
        row["throughput_batch"] = throughput_batch
        if row.get("macs"):
            achieved = 2 * row["macs"] * row["throughput_per_s"]
            row["achieved_flops_per_s"] = achieved
            row["peak_share"] = achieved / peak["flops_per_s"] if peak else None
    gpu = []
    if torch.cuda.is_available():
        log(f"[benchmark] CUDA GPU: {torch.cuda.get_device_name(0)}")
        # torch on cuda needs the torch model; an ONNX start has ONNX Runtime's CUDA path only
        g_runners = _gpu_runners(gpu_source, x1, log) if gpu_source is not None else {}
        if "CUDAExecutionProvider" in ort.get_available_providers():
            fp32 = next((v for v in variants if v.kind == "onnx" and v.role == Role.BASELINE_ONNX), None)
            if fp32:
                g_runners["onnxruntime cuda fp32"] = benchmarking.onnx_runner(
                    runtime.session(fp32.path, providers=["CUDAExecutionProvider"]))
        else:
            log("[benchmark] this ONNX Runtime has no CUDAExecutionProvider: its CUDA path is not measured")
        g_lat = benchmarking.measure_windows(g_runners, x1, window_seconds=window_seconds,
                                             max_windows=max_windows, log=log) if g_runners else {}
        g_thr = benchmarking.measure_throughput(g_runners, xb, rounds=3, iters=3) if g_runners else {}
        gpu = [{"name": k, "latency_ms": {a: b for a, b in g_lat[k].items() if a != "window_p50_ms"},
                "throughput_per_s": g_thr[k]} for k in g_runners]
    seconds = time.perf_counter() - t_start
    result = {"task": task, "quality_metric": quality.describe(metric), "variants": rows, "left_out": left_out,
              "gpu": gpu, "machine": {**benchmarking.machine(threads), "cpu_peak": peak},
              "dataset": {"source": ds.schema["source"], "test_examples": int(len(ds.test.y)),
                          "class_names": ds.class_names},
              "settings": {"threads": threads, "throughput_batch": throughput_batch,
                           "window_seconds": window_seconds, "max_windows": max_windows},
              "work_seconds": seconds}
    write_json_atomic(out_json, result)
    for row in rows:
        if row.get("latency_ms"):
            log(f"[benchmark] {row['name']:<34} {quality.said(metric.name, row[metric.name])}  "
                f"p50 {row['latency_ms']['p50']:.4f} ms  "
                f"p99 {row['latency_ms']['p99']:.4f} ms  {row['size_bytes'] / 1e3:,.0f} kB  "
                f"{stability_label(row).strip() or 'stable'}")
    return result
