"""Batch prediction throughput: the batch-predict library against a bare ONNX Runtime loop.

    python benchmarks/batch.py [--model DIR] [--data NPZ] [--rows N] [--batch-size 64] [--threads 2]
                               [--repeats 5] [--small] [--json PATH]

Both arms score the same arrays at the same batch size and thread count, with sessions opened
beforehand: the bare loop is `session.run` over slices of an array already in memory; the
library arm is the whole job (`modelpress.batch.predict` on the .npz holding those arrays: read,
chunked, scored, JSONL and errors written, renamed into place). Repeats are interleaved (the
order alternates) and the medians compared. `--small` adds an 8x8 digits MLP, where the model
costs microseconds a row and the job's own work shows. Writes benchmarks/results/batch.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelpress import batch  # noqa: E402
from modelpress.export import runtime  # noqa: E402
from modelpress.selection import benchmarking  # noqa: E402

REFERENCE_MODEL = ROOT / "build" / "serving-ref" / "teacher-onnx"     # MobileNetV2, digits at 64x64
REFERENCE_DATA = ROOT / "build" / "serving-ref" / "dataset" / "test.npz"


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def bare_loop(sess, x: np.ndarray, batch_size: int) -> float:
    """Seconds for session.run over every batch of `x`: the floor any batch job stands on."""
    name, output = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        sess.run([output], {name: x[i:i + batch_size]})
    return time.perf_counter() - start


def library_job(model: batch.BatchModel, npz: Path, out: Path, settings: batch.BatchSettings) -> float:
    start = time.perf_counter()
    summary = batch.predict(str(npz), model, out, settings, log=lambda line: None)
    seconds = time.perf_counter() - start
    assert summary["rows_predicted"] == summary["rows_read"], summary
    return seconds


def measure(name: str, model_dir: Path, x: np.ndarray, args, work: Path) -> dict:
    npz = work / f"{name}.npz"
    np.savez(npz, x=x)
    settings = batch.BatchSettings(batch_size=args.batch_size, threads=args.threads, chunk_rows=args.chunk_rows)
    model = batch.BatchModel(model_dir, args.threads)    # both arms: one session each, opened before timing
    sess = runtime.session(model_dir, threads=args.threads)
    bare_loop(sess, x, args.batch_size)                   # warm-up: ORT's first runs allocate
    library_job(model, npz, work / "out", settings)
    bare, lib = [], []
    for r in range(args.repeats):
        arms = [("bare", lambda: bare_loop(sess, x, args.batch_size)),
                ("library", lambda: library_job(model, npz, work / "out", settings))]
        for arm, run in arms if r % 2 == 0 else arms[::-1]:   # alternate who goes first
            (bare if arm == "bare" else lib).append(len(x) / run())
        log(f"{name} repeat {r + 1}: bare {bare[-1]:,.0f} rows/s, library {lib[-1]:,.0f} rows/s")
    row = {"model": name, "model_dir": str(model_dir), "rows": len(x), "instance_shape": list(x.shape[1:]),
           "bare_rows_per_s": statistics.median(bare), "library_rows_per_s": statistics.median(lib),
           "bare_samples": bare, "library_samples": lib,
           "spread_bare": benchmarking.spread(bare), "spread_library": benchmarking.spread(lib)}
    row["ratio"] = row["library_rows_per_s"] / row["bare_rows_per_s"]
    log(f"{name}: library / bare = {row['ratio']:.3f} (medians of {args.repeats})")
    return row


def small_model(work: Path) -> tuple[Path, np.ndarray]:
    """An MLP (64 -> 32 -> 10) trained briefly on the 8x8 digits, and the digits as its instances."""
    from modelpress import data, training
    from modelpress.export import onnx_export

    data.make_dataset("digits", str(work / "ds"), seed=0, log=lambda s: None)
    training.train(str(work / "ds"), str(work / "mlp"), architecture="mlp", model_args={"hidden": [32]},
                   settings=training.TrainSettings(epochs=3, seed=0), log=lambda s: None)
    onnx_export.export_onnx(str(work / "mlp"), str(work / "ds"), str(work / "mlp-onnx"), log=lambda s: None)
    return work / "mlp-onnx", data.load_source("digits").x


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# Batch prediction throughput", "",
             f"`modelpress.batch.predict` (the whole job: the .npz read, chunks of {doc['chunk_rows']:,}, scored, JSONL "
             f"and errors written and renamed) against a bare ONNX Runtime loop over the same arrays; batch "
             f"{doc['batch_size']}, {doc['threads']} intra-op thread(s), medians of {doc['repeats']} interleaved "
             "repeats.", "",
             "| model | instance | rows | bare loop (rows/s) | batch-predict (rows/s) | ratio | spread bare / lib |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['instance_shape']} | {r['rows']:,} | {r['bare_rows_per_s']:,.0f} | "
                     f"{r['library_rows_per_s']:,.0f} | **{r['ratio']:.2f}x** | {r['spread_bare']:.0%} / "
                     f"{r['spread_library']:.0%} |")
    lines += ["", f"Machine: {m['cpu_model']} ({m['cpu_count']} cores; flags {', '.join(m['cpu_flags'])}), "
                  f"ONNX Runtime {m['versions']['onnxruntime']}, numpy {m['versions']['numpy']}, "
                  f"Python {m['python']}, {m['date']}.", "",
              f"Command: `{doc['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REFERENCE_MODEL, help="an ONNX model folder")
    parser.add_argument("--data", type=Path, default=REFERENCE_DATA, help="an .npz whose 'x' the model takes")
    parser.add_argument("--rows", type=int, default=720, help="instances per run (the data repeated to fill it)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="also an 8x8 digits MLP (18,000 rows)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "batch.json")
    args = parser.parse_args(argv)
    if not (args.model / runtime.ONNX_FILE).is_file() or not args.data.is_file():
        print(f"error: {args.model}/model.onnx or {args.data} is missing; build the reference model with "
              "`python benchmarks/compression.py --work-dir build/serving-ref` (its dataset/ and teacher-onnx/), "
              "or give --model and --data", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        x = np.load(args.data)["x"].astype(np.float32)
        rows = [measure(args.model.name, args.model, np.resize(x, (args.rows, *x.shape[1:])), args, work)]
        if args.small:
            mlp, digits = small_model(work)
            rows.append(measure("digits-mlp", mlp, np.resize(digits, (10 * len(digits), *digits.shape[1:])), args,
                                work))
    doc = {"rows": rows, "batch_size": args.batch_size, "threads": args.threads, "chunk_rows": args.chunk_rows,
           "repeats": args.repeats, "machine": benchmarking.machine(args.threads),
           "command": "python " + " ".join(["benchmarks/batch.py", *(argv if argv is not None else sys.argv[1:])])}
    benchmarking.write_results(args.json, doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
