"""Serving side by side: modelpress with dynamic batching, without batching, and a naive server.

    python benchmarks/serving.py [--model DIR] [--concurrency 1,4,16,64] [--duration 8]
                                 [--instances 2] [--threads 1] [--reload-requests 10000]

The reference model is the compression benchmark's fp32 ONNX teacher (MobileNetV2 on
64x64 digits, ~1.1 ms per batch-1 call with one thread: inference, not HTTP, dominates); it is trained
and exported first when build/bench-compression/teacher-onnx is missing. All three servers
run at once as separate processes on 127.0.0.1 and are driven by the same load generator
(`modelpress.loadtest`, binary tensors), concurrency levels interleaved across the
servers so drift hits them alike. The load generator shares the machine's cores with the
servers. Then a hot-reload run: N requests at concurrency 64 against the batching server
while a new version is deployed into its repository.

Writes benchmarks/results/serving.{json,md} and serving.png.

`--peers` runs the comparison with NVIDIA Triton and KServe instead (benchmarks/serving_peers.py,
`--peers --help` for its options; its servers come from build/peers-venv).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from modelpress import loadtest  # noqa: E402
from modelpress.deploy import repository  # noqa: E402
from modelpress.export import runtime  # noqa: E402
from modelpress.selection import benchmarking  # noqa: E402

MODEL = "ref"
RESULTS = ROOT / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def ensure_model(path: Path) -> Path:
    if (path / runtime.ONNX_FILE).exists():
        return path
    log(f"{path} missing: training and exporting the reference model (configs/compression.yaml, ~5 min)")
    from modelpress import data
    from modelpress.export import onnx_export
    from modelpress import training
    from pipelines.config import load_yaml

    cfg = load_yaml(str(ROOT / "configs" / "compression.yaml"))
    work = path.parent
    ds, teacher = work / "dataset", work / "teacher"
    if not ds.exists():
        data.make_dataset(cfg["dataset"]["source"], str(ds), image_size=cfg["dataset"]["image_size"],
                          seed=cfg["dataset"].get("seed", 0))
    t = cfg["teacher"]
    if not teacher.exists():
        training.train(str(ds), str(teacher), architecture=t["architecture"], model_args=t.get("model_args", {}),
                       settings=training.TrainSettings(epochs=t["epochs"], learning_rate=t["learning_rate"],
                                                       batch_size=t.get("batch_size", 64), patience=0), log=log)
    onnx_export.export_onnx(str(teacher), str(ds), str(path), log=log)
    return path


def dense_mlp(folder: Path, widths=(4096, 2048, 2048, 10), image=(1, 32, 32)) -> Path:
    """A dense MLP (33 M parameters) as ONNX: batch 1 streams every weight from memory for
    one row, so batching cuts the cost per row several-fold: the case batching is for."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if (folder / runtime.ONNX_FILE).exists():
        return folder
    rng = np.random.default_rng(0)
    nodes, weights, prev, width = [helper.make_node("Flatten", ["input"], ["h"], axis=1)], [], "h", int(np.prod(image))
    for i, w in enumerate(widths):
        weights += [numpy_helper.from_array((rng.standard_normal((width, w)) / np.sqrt(width)).astype(np.float32),
                                            f"w{i}"), numpy_helper.from_array(np.zeros(w, np.float32), f"b{i}")]
        last = i == len(widths) - 1
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], ["logits" if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"r{i}"]))
        prev, width = f"r{i}", w
    graph = helper.make_graph(nodes, "dense_mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                ["batch", *image])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", widths[-1]])],
                              weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / runtime.ONNX_FILE))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def modelpress_grpc_flag() -> bool:
    """Whether `modelpress serve` has --grpc-port (then it is passed: 0 here, a free port for the peers)."""
    return "--grpc-port" in subprocess.run([sys.executable, "-m", "modelpress", "serve", "--help"],
                                           capture_output=True, text=True).stdout


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def bare_session_run(model: Path, threads: int, n: int = 400) -> tuple[dict, dict]:
    """session.run alone with the threads of one server instance: batch-1 latency, and the
    cost per row at larger batches (what batching can save in compute)."""
    sess = runtime.session(model, threads=threads)
    name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    per_row, batch1 = {}, {}
    for batch in (1, 4, 8, 16):
        x = rng.random([batch, *sess.get_inputs()[0].shape[1:]]).astype(np.float32)
        for _ in range(10):
            sess.run(None, {name: x})
        times = []
        for _ in range(n // batch):
            t = time.perf_counter()
            sess.run(None, {name: x})
            times.append(time.perf_counter() - t)
        if batch == 1:
            batch1 = loadtest.latency_summary(times)
        per_row[batch] = float(np.median(times)) * 1e3 / batch
    return batch1, per_row


def deploy(model: Path, repo: Path, *, batching: bool, instances: int, delay_us: int) -> None:
    from google.protobuf import text_format

    shutil.rmtree(repo, ignore_errors=True)
    repository.deploy(model, repo, MODEL, instances=instances, max_queue_delay_us=delay_us)
    if not batching:
        config = repository.read_config(repo, MODEL)
        config.ClearField("dynamic_batching")
        (repo / MODEL / repository.CONFIG_FILE).write_text(text_format.MessageToString(config))


def scrape(metrics_url: str) -> dict:
    """{version: {metric: value}} for the counters the hot-reload run reports."""
    with urllib.request.urlopen(metrics_url) as r:
        text = r.read().decode()
    counts = {}
    for line in text.splitlines():
        for key in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_failure"):
            if line.startswith(key + "{"):
                version = line.split('version="')[1].split('"')[0]
                counts.setdefault(version, {})[key] = float(line.rsplit(" ", 1)[1])
    return counts


def hot_reload_run(url: str, metrics_url: str, model: Path, repo: Path, requests: int) -> dict:
    """`requests` requests at concurrency 64; a new version lands in the repository midway.
    Counters are reported as the difference over this run alone."""
    target = loadtest.Target(url, MODEL)
    before = scrape(metrics_url)

    async def go():
        deployer = None

        async def deploy_later():
            await asyncio.sleep(3.0)
            version = await asyncio.to_thread(repository.deploy, model, repo, MODEL)
            log(f"deployed version {version} under load")

        deployer = asyncio.get_running_loop().create_task(deploy_later())
        result = await loadtest.closed_loop(target, 64, duration_s=3600, warmup_s=0, max_requests=requests)
        await deployer
        return result

    result = asyncio.run(go())
    after = scrape(metrics_url)
    counts = {v: {k: x - before.get(v, {}).get(k, 0.0) for k, x in m.items()} for v, m in after.items()}
    with urllib.request.urlopen(f"{url}/v2/models/{MODEL}") as r:
        served = r.read().decode()
    return {"result": loadtest.to_json([result])[0], "metrics_by_version": counts, "metadata_after": served}


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# Serving benchmark", "",
             f"Command: `{doc['command']}`", "",
             f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, flags {' '.join(m['cpu_flags'])}; "
             f"onnxruntime {m['versions']['onnxruntime']}; load generator on the same cores.", "",
             f"Model: {doc['model']} (fp32 ONNX). Servers: {doc['settings']}.", "",
             f"Bare `session.run`, batch 1, {doc['settings']['threads']} thread(s): p50 "
             f"{doc['bare_session_run']['p50']:.3f} ms, p99 {doc['bare_session_run']['p99']:.3f} ms. "
             "Milliseconds per row by batch size (what batching can save in compute): "
             + ", ".join(f"{b}: {ms:.3f}" for b, ms in doc["session_ms_per_row_by_batch"].items()) + ".", "",
             loadtest.table([r for s in doc["series"].values() for r in s["objects"]],
                            [name for name, s in doc["series"].items() for _ in s["objects"]]), "",
             "## Ratios at each concurrency", "",
             "| concurrency | batching / no batching (throughput) | batching / naive (throughput) | "
             "p99 batching | p99 no batching | p99 naive |", "|---|---|---|---|---|---|"]
    for c, r in doc["ratios"].items():
        lines.append(f"| {c} | {r['vs_no_batching']:.2f}x | {r['vs_naive']:.2f}x | {r['p99_ms'][0]:.2f} | "
                     f"{r['p99_ms'][1]:.2f} | {r['p99_ms'][2]:.2f} |")
    if doc.get("hot_reload"):
        h = doc["hot_reload"]
        lines += ["", "## Hot reload under load", "",
                  f"{h['result']['requests']} requests at concurrency 64, new version deployed after 3 s: "
                  f"{h['result']['ok']} ok, errors {h['result']['errors'] or 0}; count/exec_count per version, "
                  "this run alone: "
                  + ", ".join(f"v{v}: {c.get('nv_inference_count', 0):.0f}/{c.get('nv_inference_exec_count', 0):.0f}"
                              for v, c in sorted(h["metrics_by_version"].items()))]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    if "--peers" in (sys.argv[1:] if argv is None else argv):
        import serving_peers
        return serving_peers.main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "build" / "bench-compression" / "teacher-onnx")
    p.add_argument("--dense-mlp", action="store_true",
                   help="serve a generated dense MLP instead (batching's favourable case) ")
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--instances", type=int, default=2, help="instance_group.count for both modelpress servers")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per instance (1: a batch-1 "
                   "call of the reference model takes >= 1 ms, the premise of the comparison)")
    p.add_argument("--max-queue-delay-us", type=int, default=0)
    p.add_argument("--reload-requests", type=int, default=10_000, help="0 skips the hot-reload run")
    p.add_argument("--work-dir", type=Path, default=ROOT / "build" / "bench-serving")
    p.add_argument("--output", type=Path, default=RESULTS / "serving.json")
    p.add_argument("--peers", action="store_true", help="modelpress beside Triton and KServe instead: "
                   "benchmarks/serving_peers.py (see --peers --help)")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    model = dense_mlp(args.work_dir / "dense-mlp") if args.dense_mlp else ensure_model(args.model)
    bare, per_row = bare_session_run(model, args.threads)
    log(f"bare session.run p50 {bare['p50']:.3f} ms p99 {bare['p99']:.3f} ms; ms per row by batch size {per_row}")

    servers, procs = {}, []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    no_grpc = ["--grpc-port", "0"] if modelpress_grpc_flag() else []  # two servers: no shared default port
    try:
        for name, batching in (("modelpress batching", True), ("modelpress no batching", False)):
            repo = args.work_dir / name.replace(" ", "-")
            deploy(model, repo, batching=batching, instances=args.instances, delay_us=args.max_queue_delay_us)
            port, mport = free_port(), free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "modelpress", "serve", "--repository", str(repo), "--http-port", str(port),
                 "--metrics-port", str(mport), "--poll-seconds", "1", "--threads", str(args.threads), *no_grpc],
                env=env, stdout=subprocess.DEVNULL, stderr=open(args.work_dir / f"{repo.name}.log", "w")))
            servers[name] = {"url": f"http://127.0.0.1:{port}", "metrics": f"http://127.0.0.1:{mport}/metrics",
                             "repo": repo, "proc": procs[-1]}
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "naive_server.py"), "--model",
                                       str(model), "--name", MODEL, "--port", str(port)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        servers["naive per-request"] = {"url": f"http://127.0.0.1:{port}", "proc": procs[-1]}
        for s in servers.values():
            wait_ready(s["url"], s["proc"])
        series = {name: [] for name in servers}
        for c in levels:
            for name, s in servers.items():
                r = asyncio.run(loadtest.closed_loop(loadtest.Target(s["url"], MODEL), c, args.duration, args.warmup))
                series[name].append(r)
                log(f"{name:24s} {loadtest.format_row(r)}")
        hot = None
        if args.reload_requests:
            s = servers["modelpress batching"]
            log(f"hot reload: {args.reload_requests} requests at concurrency 64, new version after 3 s")
            hot = hot_reload_run(s["url"], s["metrics"], model, s["repo"], args.reload_requests)
            log(f"hot reload: {hot['result']['ok']} ok, errors {hot['result']['errors']}, "
                f"metrics {hot['metrics_by_version']}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)

    names = list(series)
    ratios = {}
    for i, c in enumerate(levels):
        b, nb, nv = (series[n][i] for n in names)
        ratios[str(c)] = {"vs_no_batching": b.throughput_rps / nb.throughput_rps,
                          "vs_naive": b.throughput_rps / nv.throughput_rps,
                          "p99_ms": [x.latency_ms["p99"] for x in (b, nb, nv)]}
    doc = {"command": "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "model": str(model), "machine": benchmarking.machine(args.threads),
           "settings": {"instances": args.instances, "threads": args.threads,
                        "max_queue_delay_us": args.max_queue_delay_us, "duration_s": args.duration,
                        "warmup_s": args.warmup, "naive": "one ORT session, default threads, FastAPI-style threadpool"},
           "bare_session_run": bare, "session_ms_per_row_by_batch": per_row, "series": {n: loadtest.to_json(rs) for n, rs in series.items()},
           "ratios": ratios, "hot_reload": hot}
    benchmarking.write_results(args.output, doc, markdown({**doc, "series": {n: {"objects": rs}
                                                                        for n, rs in series.items()}}))
    loadtest.plot(series, str(args.output.with_suffix(".png")))
    log(f"wrote {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
