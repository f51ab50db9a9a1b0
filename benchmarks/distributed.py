"""DDP scaling on this machine: throughput for 1, 2, ... processes, efficiency, gradient bytes; then
DDP and FSDP2 under torchrun and under Ray Train side by side: samples/s and bytes held per rank.

    python benchmarks/distributed.py [--processes 1,2] [--epochs 8] [--repeats 3]
                                     [--image-size 32] [--json PATH] [--work-dir DIR]

For every process count W (default 1 up to the number of cores) the same model trains with
DistributedDataParallel (gloo, CPU) as W processes x cores/W torch threads. For the scaling
efficiency, 1 process at cores/W threads trains too: efficiency = throughput(W processes) /
(W x throughput(1 process with the same threads)); speedup compares with 1 process using every
core. A window is one training epoch (validation excluded); each run's first epoch is warm-up
and dropped; figures are medians over the remaining windows of every repeat, with the runs
interleaved (A B C A B C ...) so that drift hits them alike. Gradient bytes per step are
counted by the DDP communication hook. Writes JSON and Markdown to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelpress.selection import benchmarking
from modelpress import data
from modelpress.training import distributed
from modelpress import training  # noqa: E402


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(ds_dir: Path, work: Path, procs: int, threads: int, args, parallelism: str = "ddp",
             engine: str = "torchrun") -> dict:
    settings = training.TrainSettings(epochs=args.epochs, batch_size=args.batch_size, seed=0, patience=0,
                                      device="cpu")
    t0 = time.perf_counter()
    result = distributed.train(str(ds_dir), str(work / f"model-{engine}-{parallelism}-{procs}x{threads}"),
                               architecture=args.architecture, model_args=args.model_args, settings=settings,
                               log=lambda _m: None, verbose=False,
                               layout=distributed.Layout(nproc_per_node=procs, threads_per_process=threads,
                                                         master_port=free_port(), parallelism=parallelism,
                                                         engine=engine))
    m = result["metrics"]
    per_epoch = args.train_examples // procs * procs  # the sampler drops what does not split evenly
    windows = [per_epoch / h["train_seconds"] for h in result["history"][1:]]
    return {"windows": windows, "test_accuracy": m["test_accuracy"], "wall_seconds": time.perf_counter() - t0,
            "step_ms": [m[f"step_ms_rank{r}"] for r in range(procs)],
            **{k: m.get(k) for k in ("allreduce_bytes_per_step", "gradient_bytes", "ring_bytes_sent_per_rank_per_step",
                                     "param_bytes_max", "grad_bytes_max", "optimizer_bytes_max",
                                     "params_and_optimizer_bytes_max")}}


ENGINES = (("DDP, torchrun", "ddp", "torchrun"), ("FSDP2, torchrun", "fsdp", "torchrun"),
           ("DDP, Ray Train", "ddp", "ray"), ("FSDP2, Ray Train", "fsdp", "ray"))


def measure_engines(ds_dir: Path, work: Path, args) -> list[dict]:
    """At the most processes: DDP and FSDP2 under torchrun and under Ray Train, interleaved, on one local
    Ray for every Ray run (starting one takes seconds: not what a run measures)."""
    from modelpress.training.distributed import ray_engine

    procs = max(args.processes)
    threads = max(1, distributed.cpu_cores() // procs)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in ENGINES}
    with ray_engine.local_ray():
        for rep in range(args.repeats):
            for name, parallelism, engine in ENGINES:
                r = run_once(ds_dir, work, procs, threads, args, parallelism, engine)
                runs[name].append(r)
                log(f"repeat {rep + 1}/{args.repeats}: {name}, {procs} x {threads} thread(s): "
                    f"{statistics.median(r['windows']):,.0f} samples/s, run {r['wall_seconds']:.0f}s")
    ddp = runs["DDP, torchrun"][0]["params_and_optimizer_bytes_max"]
    rows = []
    for name, parallelism, engine in ENGINES:
        rs = runs[name]
        windows = [w for r in rs for w in r["windows"]]
        held = rs[0]["params_and_optimizer_bytes_max"]
        rows.append({"name": name, "parallelism": parallelism, "engine": engine, "processes": procs,
                     "threads_per_process": threads, "samples_per_s": statistics.median(windows),
                     "windows": len(windows), "run_seconds": statistics.median(r["wall_seconds"] for r in rs),
                     "test_accuracy": [r["test_accuracy"] for r in rs],
                     **{k: rs[0][k] for k in ("param_bytes_max", "grad_bytes_max", "optimizer_bytes_max",
                                              "params_and_optimizer_bytes_max")},
                     "params_and_optimizer_vs_ddp": held / ddp})
    return rows


def measure(ds_dir: Path, work: Path, args) -> tuple[dict, dict]:
    cores = distributed.cpu_cores()
    configs = []
    for w in args.processes:
        for cfg in ((w, max(1, cores // w)), (1, max(1, cores // w))):
            if cfg not in configs:
                configs.append(cfg)
    runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for rep in range(args.repeats):
        for procs, threads in configs:
            t0 = time.time()
            r = run_once(ds_dir, work, procs, threads, args)
            runs[(procs, threads)].append(r)
            log(f"repeat {rep + 1}/{args.repeats}: {procs} process(es) x {threads} thread(s): "
                f"{statistics.median(r['windows']):,.0f} samples/s ({time.time() - t0:.0f}s)")
    summary = {}
    for (procs, threads), rs in runs.items():
        windows = [w for r in rs for w in r["windows"]]
        summary[(procs, threads)] = {
            "processes": procs, "threads_per_process": threads, "samples_per_s": statistics.median(windows),
            "windows": len(windows), "window_samples_per_s": windows,
            "step_ms_per_rank": [statistics.median(r["step_ms"][k] for r in rs) for k in range(procs)],
            "test_accuracy": [r["test_accuracy"] for r in rs],
            **{k: rs[0][k] for k in ("allreduce_bytes_per_step", "gradient_bytes",
                                     "ring_bytes_sent_per_rank_per_step")},
        }
    all_cores = summary[(1, cores)]["samples_per_s"] if (1, cores) in summary else None
    rows = []
    for w in args.processes:
        row = dict(summary[(w, max(1, cores // w))])
        base = summary[(1, row["threads_per_process"])]["samples_per_s"]
        row["baseline_1_process_samples_per_s"] = base
        row["scaling_efficiency"] = row["samples_per_s"] / (w * base)
        row["speedup_vs_1_process_all_cores"] = row["samples_per_s"] / all_cores if all_cores else None
        rows.append(row)
    extra = [v for k, v in summary.items() if k not in {(r["processes"], r["threads_per_process"]) for r in rows}]
    return {"rows": rows, "baselines": extra}, benchmarking.machine(cores)


def markdown(result: dict, machine: dict, args) -> str:
    lines = ["# Distributed training benchmark (DDP, FSDP2, torchrun and Ray Train; gloo, CPU)", "",
             f"`{args.architecture}` {args.model_args} on digits at {args.image_size}x{args.image_size}, "
             f"{args.train_examples} training examples, global batch {args.batch_size}; {args.epochs} epochs per "
             f"run (first dropped), {args.repeats} interleaved repeats; medians over epochs (validation excluded).",
             "", f"{machine['cpu_model']}, {machine['cpu_count']} cores; flags {' '.join(machine['cpu_flags'])}; "
             f"torch {machine['versions']['torch']}; {machine['date']}.", "",
             "| processes | threads each | samples/s | windows | speedup vs 1 process, all cores | "
             "1 process, same threads: samples/s | scaling efficiency | step ms per rank | "
             "all-reduced bytes/step | ring bytes sent/rank/step |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in result["rows"]:
        speed = f"{r['speedup_vs_1_process_all_cores']:.2f}" if r["speedup_vs_1_process_all_cores"] else "n/a"
        lines.append(f"| {r['processes']} | {r['threads_per_process']} | {r['samples_per_s']:,.0f} | {r['windows']} | "
                     f"{speed} | {r['baseline_1_process_samples_per_s']:,.0f} | {r['scaling_efficiency']:.2f} | "
                     f"{' / '.join(f'{v:.1f}' for v in r['step_ms_per_rank'])} | "
                     f"{r['allreduce_bytes_per_step']:,.0f} | {r['ring_bytes_sent_per_rank_per_step']:,.0f} |")
    lines += ["", "Scaling efficiency = samples/s of W processes / (W x samples/s of 1 process with the same "
              "threads per process). All-reduced bytes are counted by a DDP communication hook and equal the "
              f"gradient size ({result['rows'][0]['gradient_bytes']:,} bytes); a ring all-reduce sends "
              "2 (W-1)/W of that per rank."]
    engines = result.get("engines") or []
    if engines:
        lines += ["", f"## Sharding and engines at {engines[0]['processes']} processes", "",
                  "Bytes held by the most loaded rank after the first step, counted from the tensors themselves "
                  "(a DTensor counts its local shard); run seconds include each engine's start-up.", "",
                  "| run | samples/s | windows | run s | parameters B/rank | gradients B/rank | optimiser B/rank | "
                  "params + optimiser vs DDP |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in engines:
            lines.append(f"| {r['name']} | {r['samples_per_s']:,.0f} | {r['windows']} | {r['run_seconds']:.1f} | "
                         f"{r['param_bytes_max']:,} | {r['grad_bytes_max']:,} | {r['optimizer_bytes_max']:,} | "
                         f"{r['params_and_optimizer_vs_ddp']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = distributed.cpu_cores()
    p.add_argument("--processes", default=",".join(str(w) for w in range(1, cores + 1)),
                   help="comma-separated process counts (default: 1 up to the number of cores)")
    p.add_argument("--architecture", default="cnn")
    p.add_argument("--model-args", type=json.loads, default={"channels": [32, 64]})
    p.add_argument("--image-size", type=int, default=32, help="digits resized to this square size")
    p.add_argument("--batch-size", type=int, default=64, help="global batch")
    p.add_argument("--epochs", type=int, default=8, help="epochs per run; the first is warm-up")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    p.add_argument("--work-dir", default=str(ROOT / "build" / "bench-distributed"))
    args = p.parse_args(argv)
    args.processes = [int(w) for w in args.processes.split(",")]
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch of every run is warm-up")
    work = Path(args.work_dir)
    ds_dir = work / "dataset"
    data.make_dataset("digits", str(ds_dir), image_size=args.image_size, seed=0)
    args.train_examples = len(data.load_dataset(str(ds_dir)).train.x)
    t0 = time.time()
    result, mach = measure(ds_dir, work, args)
    result["engines"] = measure_engines(ds_dir, work, args)
    log(f"measured in {time.time() - t0:.0f}s")
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "work_dir")}
    benchmarking.write_results(args.json, {"settings": settings, "machine": mach, **result},
                               markdown(result, mach, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
