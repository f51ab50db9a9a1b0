"""Compression side by side: accuracy, size, params, MACs, latency and throughput per variant.

    python benchmarks/compression.py [--config configs/compression.yaml] [--json PATH]
                                     [--work-dir DIR] [--reuse]

Produces (or with --reuse, reuses) every variant of the reference model, then measures all
of them in one process, interleaved, with ONNX Runtime on the CPU at a fixed thread count
(torch eager for the baseline). Writes JSON and Markdown to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelpress import data, models, training  # noqa: E402
from modelpress.compression import distillation, pruning, qat, quantisation  # noqa: E402
from modelpress.evaluation import torch_scoring  # noqa: E402
from modelpress.export import onnx_export, runtime  # noqa: E402
from modelpress.selection import benchmarking  # noqa: E402
from pipelines.config import check_keys, load_yaml  # noqa: E402

SECTIONS = ("dataset", "teacher", "structured", "unstructured", "student", "quantisation", "qat", "measure")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def produce(cfg: dict, work: Path, reuse: bool) -> dict[str, Path]:
    """Train, prune, distil, export and quantise; return {variant: artifact dir}."""
    quiet = log  # per-epoch progress included: the teacher alone trains for minutes
    step = {"ds": work / "dataset", "teacher": work / "teacher"}

    def need(path: Path) -> bool:
        if reuse and path.exists():
            log(f"reusing {path}")
            return False
        return True

    d = cfg["dataset"]
    if need(step["ds"]):
        data.make_dataset(d["source"], str(step["ds"]), image_size=d.get("image_size", 0), seed=d.get("seed", 0))
    t = cfg["teacher"]
    if need(step["teacher"]):
        training.train(str(step["ds"]), str(step["teacher"]), architecture=t["architecture"],
                       model_args=t.get("model_args", {}), log=quiet,
                       settings=training.TrainSettings(epochs=t["epochs"], learning_rate=t["learning_rate"],
                                                       batch_size=t.get("batch_size", 64), patience=0))
    torch_dirs = {"teacher": step["teacher"]}
    s = cfg["structured"]
    torch_dirs["structured"] = work / "structured"
    if need(torch_dirs["structured"]):
        pruning.prune(str(step["teacher"]), str(step["ds"]), str(torch_dirs["structured"]), method="structured",
                      amount=s["amount"], log=quiet,
                      settings=training.TrainSettings(epochs=s["finetune_epochs"], learning_rate=s["learning_rate"],
                                                      patience=0))
    u = cfg["unstructured"]
    torch_dirs["unstructured"] = work / "unstructured"
    if need(torch_dirs["unstructured"]):
        pruning.prune(str(step["teacher"]), str(step["ds"]), str(torch_dirs["unstructured"]),
                      method="unstructured", amount=u["amount"], steps=u["steps"], log=quiet,
                      settings=training.TrainSettings(epochs=u["finetune_epochs"], learning_rate=u["learning_rate"],
                                                      patience=0))
    st = cfg["student"]
    st_settings = training.TrainSettings(epochs=st["epochs"], learning_rate=st["learning_rate"], patience=0)
    torch_dirs["student"] = work / "student-distilled"
    if need(torch_dirs["student"]):
        distillation.distil(str(step["teacher"]), str(step["ds"]), str(torch_dirs["student"]),
                            student_architecture=st["architecture"], student_args=st.get("model_args", {}),
                            temperature=st["temperature"], alpha=st["alpha"], settings=st_settings, log=quiet)
    torch_dirs["scratch"] = work / "student-scratch"
    if need(torch_dirs["scratch"]):
        training.train(str(step["ds"]), str(torch_dirs["scratch"]), architecture=st["architecture"],
                       model_args=st.get("model_args", {}), settings=st_settings, log=quiet)
    onnx_dirs = {}
    for name, tdir in torch_dirs.items():
        onnx_dirs[name] = work / f"{name}-onnx"
        if need(onnx_dirs[name]):
            onnx_export.export_onnx(str(tdir), str(step["ds"]), str(onnx_dirs[name]), log=log)
    q = cfg["quantisation"]
    quantised = {}
    for name, method, per_channel in (("teacher", "static-int8", True), ("teacher", "dynamic-int8", True),
                                      ("structured", "static-int8", True), ("student", "static-int8", True),
                                      ("teacher", "static-int8", False)):
        out = work / f"{name}-{method}{'' if per_channel else '-per-tensor'}"
        quantised[(name, method, per_channel)] = out
        if need(out):
            quantisation.quantise(str(onnx_dirs[name]), str(step["ds"]), str(out), method=method,
                                  calibration_samples=q["calibration_samples"], per_channel=per_channel,
                                  calibration_method=q["calibration_method"], log=log)
    # quantisation-aware training, per tensor: the counterpart of the per-tensor post-training variant
    qa = cfg["qat"]
    qat_dir = work / "teacher-qat-per-tensor"
    if need(qat_dir):
        qat.qat(str(step["teacher"]), str(step["ds"]), str(qat_dir), per_channel=False, log=quiet,
                settings=training.TrainSettings(epochs=qa["epochs"], learning_rate=qa["learning_rate"],
                                                batch_size=qa.get("batch_size", 64), patience=0))
    return {
        "dataset": step["ds"],
        "torch eager fp32": step["teacher"],
        "ONNX fp32": onnx_dirs["teacher"],
        "static int8": quantised[("teacher", "static-int8", True)],
        "dynamic int8": quantised[("teacher", "dynamic-int8", True)],
        "static int8 per-tensor": quantised[("teacher", "static-int8", False)],
        "QAT int8 per-tensor": qat_dir,
        "structured-pruned fp32": onnx_dirs["structured"],
        "structured-pruned static int8": quantised[("structured", "static-int8", True)],
        "unstructured-pruned fp32": onnx_dirs["unstructured"],
        "distilled student fp32": onnx_dirs["student"],
        "distilled student static int8": quantised[("student", "static-int8", True)],
        "student without teacher fp32": onnx_dirs["scratch"],
    }


def measure(paths: dict[str, Path], m: dict) -> tuple[list[dict], dict]:
    ds = data.load_dataset(str(paths["dataset"]))
    threads = m["threads"]
    variants, runners = [], {}
    for name, path in paths.items():
        if name == "dataset":
            continue
        if name.startswith("torch"):
            model, spec = models.load_model(str(path))
            file = path / models.WEIGHTS_FILE
            runners[name] = benchmarking.torch_runner(model, threads)
            logits = torch_scoring.predict_logits(model, ds.test.x)
            meta = runtime.read_meta(paths["ONNX fp32"])
            params, macs = models.count_params(model), meta["macs"]
        else:
            file = runtime.onnx_file(path)
            sess = runtime.session(path, threads=threads)
            runners[name] = benchmarking.onnx_runner(sess)
            logits = runtime.run_logits(sess, ds.test.x)
            meta = runtime.read_meta(path)
            params, macs = meta.get("params"), meta.get("macs")
        accuracy = float((logits.argmax(1) == ds.test.y).mean())
        variants.append({"name": name, "path": str(file), "accuracy": accuracy, **benchmarking.file_sizes(file),
                         "params": params, "macs": macs, "precision": meta.get("precision", "fp32")})
    log(f"measuring {len(runners)} variants: batch-1 latency, {m['rounds']} interleaved rounds x {m['iters']} calls, "
        f"{threads} thread(s)")
    x1 = ds.test.x[:1].copy()
    lat = benchmarking.measure_latency(runners, x1, rounds=m["rounds"], iters=m["iters"], warmup=m["warmup"], log=log)
    xb = ds.test.x[:m["throughput_batch"]].copy()
    log(f"measuring throughput at batch {len(xb)}")
    thr = benchmarking.measure_throughput(runners, xb, rounds=m["throughput_rounds"])
    for v in variants:
        stats = lat[v["name"]]
        v["latency_ms"] = {k: stats[k] for k in ("p50", "p90", "p95", "p99", "mean", "n")}
        v["throughput_per_s"] = thr[v["name"]]
    return variants, benchmarking.machine(threads)


def ratios(variants: list[dict]) -> dict:
    by = {v["name"]: v for v in variants}
    base = by["ONNX fp32"]

    def r(a, b, key, sub=None):
        va = by[a][key][sub] if sub else by[a][key]
        vb = by[b][key][sub] if sub else by[b][key]
        return va / vb if vb else None

    out = {
        "static_int8_vs_onnx_fp32": {"size": r("static int8", "ONNX fp32", "size_bytes"),
                                     "p50": r("static int8", "ONNX fp32", "latency_ms", "p50"),
                                     "accuracy_drop_points": 100 * (base["accuracy"] - by["static int8"]["accuracy"])},
        "dynamic_int8_vs_onnx_fp32": {"size": r("dynamic int8", "ONNX fp32", "size_bytes"),
                                      "p50": r("dynamic int8", "ONNX fp32", "latency_ms", "p50")},
        "structured_vs_onnx_fp32": {"p50": r("structured-pruned fp32", "ONNX fp32", "latency_ms", "p50"),
                                    "macs": r("structured-pruned fp32", "ONNX fp32", "macs"),
                                    "params": r("structured-pruned fp32", "ONNX fp32", "params"),
                                    "accuracy_drop_points": 100 * (base["accuracy"] - by["structured-pruned fp32"]["accuracy"])},
        "unstructured_vs_onnx_fp32": {"gzip": r("unstructured-pruned fp32", "ONNX fp32", "gzip_bytes"),
                                      "accuracy_drop_points": 100 * (base["accuracy"] - by["unstructured-pruned fp32"]["accuracy"])},
        "student_vs_teacher": {"params": r("distilled student fp32", "ONNX fp32", "params"),
                               "accuracy_share": r("distilled student fp32", "ONNX fp32", "accuracy"),
                               "minus_scratch_points": 100 * (by["distilled student fp32"]["accuracy"]
                                                              - by["student without teacher fp32"]["accuracy"])},
        "onnx_fp32_vs_torch_eager": {"p50": r("ONNX fp32", "torch eager fp32", "latency_ms", "p50")},
        "qat_vs_static_int8_per_tensor": qat_recovery(by),
    }
    return out


def qat_recovery(by: dict) -> dict:
    """Per tensor, same run: the points post-training quantisation loses against fp32, the points QAT
    loses, the share of the loss QAT recovers, and QAT's p50 against the post-training variant's."""
    fp32, ptq, qat_ = (by[n]["accuracy"] for n in ("ONNX fp32", "static int8 per-tensor", "QAT int8 per-tensor"))
    ptq_loss, qat_loss = 100 * (fp32 - ptq), 100 * (fp32 - qat_)
    return {"ptq_loss_points": ptq_loss, "qat_loss_points": qat_loss,
            "recovered_share": (ptq_loss - qat_loss) / ptq_loss if ptq_loss > 0 else None,
            "p50_qat_vs_ptq": by["QAT int8 per-tensor"]["latency_ms"]["p50"] / by["static int8 per-tensor"]["latency_ms"]["p50"]}


def markdown(variants: list[dict], machine: dict, rat: dict, cfg_path: str) -> str:
    lines = ["# Compression benchmark", "",
             f"Configuration `{cfg_path}`; {machine['cpu_model']}, {machine['cpu_count']} cores, "
             f"{machine['threads']} thread(s); flags {' '.join(machine['cpu_flags'])}; "
             f"torch {machine['versions']['torch']}, ONNX Runtime {machine['versions']['onnxruntime']}; "
             f"{machine['date']}.", "",
             "| variant | accuracy | size MB | gzip MB | params | MMACs | p50 ms | p95 ms | p99 ms | batch-64 rows/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        lat = v["latency_ms"]
        lines.append(f"| {v['name']} | {v['accuracy']:.4f} | {v['size_bytes'] / 1e6:.2f} | {v['gzip_bytes'] / 1e6:.2f} | "
                     f"{v['params']:,} | {v['macs'] / 1e6:.1f} | {lat['p50']:.3f} | {lat['p95']:.3f} | "
                     f"{lat['p99']:.3f} | {v['throughput_per_s']:,.0f} |")
    lines += ["", "Ratios (same run):", ""]
    for k, d in rat.items():
        lines.append(f"- {k}: " + ", ".join(f"{a} {b:.3f}" for a, b in d.items() if b is not None))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "compression.yaml"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "compression.json"))
    p.add_argument("--work-dir", default=str(ROOT / "build" / "bench-compression"))
    p.add_argument("--reuse", action="store_true", help="reuse variants already in --work-dir")
    args = p.parse_args(argv)
    cfg = load_yaml(args.config)
    check_keys(cfg, SECTIONS, args.config)
    work = Path(args.work_dir)
    t0 = time.time()
    paths = produce(cfg, work, args.reuse)
    log(f"variants ready in {time.time() - t0:.0f}s")
    variants, mach = measure(paths, cfg["measure"])
    rat = ratios(variants)
    result = {"config": cfg, "machine": mach, "variants": variants, "ratios": rat}
    benchmarking.write_results(args.json, result, markdown(variants, mach, rat, Path(args.config).name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
