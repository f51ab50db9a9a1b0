"""Text models side by side: a BERT-style teacher, its ONNX variants and a distilled student.

    python benchmarks/text.py [--config configs/text_benchmark.yaml] [--json PATH] [--work-dir DIR] [--reuse]

Writes the synthetic review dataset, trains the teacher (4 layers, hidden 256) from scratch,
exports it to ONNX, fuses it with ONNX Runtime's transformer optimiser, quantises it (dynamic and
static int8), distils a 2-layer student from it, and measures every variant in one process with
the optimise pipeline's own text benchmark (`selection.text_benchmark`: the same test texts, batch-1
latency in windows with the stability rule at the 95th-percentile length and at max_length 128,
batch-32 throughput, variants interleaved). Writes JSON and Markdown to benchmarks/results/text.*,
with each target of the text-models issue checked against the figures of this one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelpress import data, training  # noqa: E402
from modelpress.compression import distillation, quantisation  # noqa: E402
from modelpress.core.results import Role, Variant  # noqa: E402
from modelpress.data.text import write_reviews  # noqa: E402
from modelpress.export import onnx_export  # noqa: E402
from modelpress.selection import benchmarking, comparison  # noqa: E402
from pipelines.config import check_keys, load_yaml  # noqa: E402

SECTIONS = ("dataset", "teacher", "student", "quantisation", "measure")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def produce(cfg: dict, work: Path, reuse: bool) -> tuple[Path, list[Variant]]:
    """Every variant's artifact (made here, or reused from `work` with --reuse)."""
    def need(path: Path) -> bool:
        if reuse and path.exists():
            log(f"reusing {path}")
            return False
        return True

    d, t, s, q = cfg["dataset"], cfg["teacher"], cfg["student"], cfg["quantisation"]
    csv, ds = work / "reviews.csv", work / "dataset"
    if need(ds):
        write_reviews(str(csv), d["rows"], seed=d["seed"])
        data.make_dataset(str(csv), str(ds), text_column="text", vocab_size=d["vocab_size"],
                          max_length=d["max_length"], seed=d["seed"], log=log)
    teacher = work / "teacher"
    if need(teacher):
        training.train(str(ds), str(teacher), architecture="bert", model_args=t["model_args"], log=log,
                       settings=training.TrainSettings(epochs=t["epochs"], learning_rate=t["learning_rate"],
                                                       batch_size=t["batch_size"], patience=0))
    student = work / "student"
    if need(student):
        distillation.distil(str(teacher), str(ds), str(student), student_architecture="from-teacher",
                            student_args={"layers": s["layers"]}, temperature=s["temperature"], alpha=s["alpha"],
                            settings=training.TrainSettings(epochs=s["epochs"], learning_rate=s["learning_rate"],
                                                            batch_size=t["batch_size"], patience=0), log=log)
    onnx = {}
    for name, folder in (("teacher", teacher), ("student", student)):
        onnx[name] = work / f"{name}-onnx"
        if need(onnx[name]):
            onnx_export.export_onnx(str(folder), str(ds), str(onnx[name]), log=log)
    made = {}
    for name, method in (("teacher", "fused"), ("teacher", "dynamic-int8"), ("teacher", "static-int8"),
                         ("student", "dynamic-int8")):
        made[(name, method)] = work / f"{name}-{method}"
        if need(made[(name, method)]):
            quantisation.quantise(str(onnx[name]), str(ds), str(made[(name, method)]), method=method,
                                  calibration_samples=q["calibration_samples"],
                                  calibration_method=q["calibration_method"], log=log)
    variants = [Variant("torch eager fp32", str(teacher), "torch", Role.BASELINE),
                Variant("ONNX fp32", str(onnx["teacher"]), "onnx", Role.BASELINE_ONNX),
                Variant("ONNX fused fp32", str(made[("teacher", "fused")]), "onnx"),
                Variant("ONNX dynamic int8", str(made[("teacher", "dynamic-int8")]), "onnx"),
                Variant("ONNX static int8", str(made[("teacher", "static-int8")]), "onnx"),
                Variant("student torch eager fp32", str(student), "torch"),
                Variant("student ONNX fp32", str(onnx["student"]), "onnx"),
                Variant("student ONNX dynamic int8", str(made[("student", "dynamic-int8")]), "onnx")]
    return ds, variants


def targets(rows: dict[str, dict]) -> list[dict]:
    """The issue's targets at sequence length 128, batch 1 (p50), each with its measured figure."""
    def p50(name: str, key: str = "latency_max_length_ms") -> float:
        return rows[name][key]["p50"]

    def stable(*names: str) -> bool:
        return all(rows[n]["latency_max_length_ms"]["stable"] for n in names)

    acc = {n: r["accuracy"] for n, r in rows.items()}
    checks = [
        ("ONNX fp32 vs torch eager (speed-up)", p50("torch eager fp32") / p50("ONNX fp32"), ">=", 2.0,
         ("torch eager fp32", "ONNX fp32")),
        ("fused vs unfused ONNX fp32 (p50 ratio)", p50("ONNX fused fp32") / p50("ONNX fp32"), "<=", 0.85,
         ("ONNX fused fp32", "ONNX fp32")),
        ("dynamic int8 vs ONNX fp32 (p50 ratio)", p50("ONNX dynamic int8") / p50("ONNX fp32"), "<=", 0.5,
         ("ONNX dynamic int8", "ONNX fp32")),
        ("dynamic int8 accuracy lost (points)", 100 * (acc["ONNX fp32"] - acc["ONNX dynamic int8"]), "<=", 1.0, ()),
        ("student vs teacher ONNX fp32 (p50 ratio)", p50("student ONNX fp32") / p50("ONNX fp32"), "<=", 0.55,
         ("student ONNX fp32", "ONNX fp32")),
        ("student accuracy share of the teacher's", acc["student ONNX fp32"] / acc["ONNX fp32"], ">=", 0.97, ()),
    ]
    out = []
    for what, value, op, bar, timed in checks:
        met = value >= bar if op == ">=" else value <= bar
        out.append({"target": what, "measured": value, "bar": f"{op} {bar}", "met": bool(met),
                    "stable": stable(*timed) if timed else None})
    return out


def markdown(result: dict, cfg_path: str) -> str:
    m, rows = result["machine"], result["variants"]
    lengths = result["settings"]["sequence_lengths"]
    lines = ["# Text models benchmark", "",
             f"Configuration `{cfg_path}`; {m['cpu_model']}, {m['cpu_count']} cores, {m['threads']} thread(s); "
             f"flags {' '.join(m['cpu_flags'])}; torch {m['versions']['torch']}, ONNX Runtime "
             f"{m['versions']['onnxruntime']}; {m['date']}. Test split: {result['dataset']['test_examples']} texts; "
             f"batch-1 p50/p99 in ms at the p95 length ({lengths['p95']} tokens) and at max_length "
             f"({lengths['max_length']}); throughput in texts/s at batch {result['settings']['throughput_batch']}.", "",
             f"| variant | accuracy | size MB | params | p50 @{lengths['p95']} | p99 @{lengths['p95']} | "
             f"p50 @{lengths['max_length']} | p99 @{lengths['max_length']} | texts/s @{lengths['p95']} | "
             f"texts/s @{lengths['max_length']} | stable |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        a, b = r["latency_ms"], r["latency_max_length_ms"]
        stable = "yes" if a["stable"] and b["stable"] else f"no (spread {max(a['spread'], b['spread']):.0%})"
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {r['size_bytes'] / 1e6:.2f} | {r['params'] or 0:,} | "
                     f"{a['p50']:.3f} | {a['p99']:.3f} | {b['p50']:.3f} | {b['p99']:.3f} | "
                     f"{r['throughput_per_s']:,.0f} | {r['throughput_max_length_per_s']:,.0f} | {stable} |")
    lines += ["", f"Targets (sequence length {lengths['max_length']}, batch 1, p50; same run):", "",
              "| target | measured | bar | met |", "|---|---:|---|---|"]
    for t in result["targets"]:
        note = "" if t["stable"] in (None, True) else " (a timing was unstable)"
        lines.append(f"| {t['target']} | {t['measured']:.3f} | {t['bar']} | {'yes' if t['met'] else 'NO'}{note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "text_benchmark.yaml"))
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "text.json"))
    p.add_argument("--work-dir", default=str(ROOT / "build" / "bench-text"))
    p.add_argument("--reuse", action="store_true", help="reuse variants already in --work-dir")
    args = p.parse_args(argv)
    cfg = load_yaml(args.config)
    check_keys(cfg, SECTIONS, args.config)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ds, variants = produce(cfg, work, args.reuse)
    log(f"variants ready in {time.time() - t0:.0f}s; measuring")
    m = cfg["measure"]
    result = comparison.benchmark(variants, str(ds), str(work / "results.json"), threads=m["threads"],
                                  window_seconds=m["window_seconds"], max_windows=m["max_windows"], log=log)
    rows = {r["name"]: r for r in result["variants"]}
    result = {**result, "config": cfg, "targets": targets(rows)}
    for r in result["variants"]:
        r.pop("confusion_matrix", None)
    benchmarking.write_results(args.json, result, markdown(result, Path(args.config).name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
