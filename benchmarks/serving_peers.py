"""modelpress beside the servers a user would pick instead: NVIDIA Triton and KServe.

    python benchmarks/serving.py --peers [--model DIR] [--concurrency 1,16] [--window 3] [--warmup 1]
                                         [--max-windows 8] [--instances 2] [--threads 1]
    python benchmarks/serving.py --peers --smoke    # each server starts, answers one infer right, stops

Same model (the compression benchmark's fp32 MobileNetV2 ONNX), same load generator
(`modelpress.loadtest`: closed loop, HTTP v2 binary tensors), same total ONNX Runtime threads
(instances x threads per server). The servers:
- modelpress HTTP and modelpress gRPC (the same process's --grpc-port, driven by
  `loadtest.GrpcTarget`, the generator of `modelpress loadtest --protocol grpc`; left out, and its
  target "not measured", where this checkout lacks either), dynamic batching as the deploy step
  writes it;
- NVIDIA Triton: the `tritonserver` nvidia-pytriton bundles, a Python function running ONNX
  Runtime behind Triton's dynamic batcher with modelpress's batching settings
  (benchmarks/peers/triton_server.py);
- KServe's Python model server (benchmarks/peers/kserve_server.py);
- a bare `session.run` loop at batch 1 in this process (the floor; concurrency 1 only).
The peers run from their own venv, build/peers-venv (`bash benchmarks/peers/setup.sh`), as
subprocesses on 127.0.0.1. Windows are interleaved across servers (A B C D A B C D ...) at each
level until every server has 3 consecutive windows within 10 % on p50 and throughput (Triton
perf_analyzer's stability rule, `modelpress.selection.benchmarking.best_run`) or --max-windows
is reached; the figures pool the requests of that run of windows.

Writes benchmarks/results/serving-peers.{json,md} with the issue's targets, each met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

import serving
from serving import MODEL, ROOT, RESULTS, free_port, log
from modelpress import loadtest
from modelpress.deploy import repository
from modelpress.export import runtime
from modelpress.loadtest import LevelResult
from modelpress.selection import benchmarking
from modelpress.serving.protocol import binary_request, decode_infer_response

PEERS_VENV = ROOT / "build" / "peers-venv"
SETUP = "bash benchmarks/peers/setup.sh"
PEER_PACKAGES = ("nvidia-pytriton", "kserve", "onnxruntime", "numpy", "tritonclient", "fastapi", "uvicorn")
HTTP, GRPC, TRITON, KSERVE, BARE = "modelpress HTTP", "modelpress gRPC", "Triton (pytriton)", "KServe", \
    "bare session.run"


def peers_python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        setup = SETUP if venv.resolve() == PEERS_VENV else f"PEERS_VENV={venv} {SETUP}"
        raise SystemExit(f"{venv} is missing: the peers (Triton, KServe) run from their own venv. Create it with "
                         f"`{setup}` (or `make bench-serving-peers`, which creates it and runs the comparison).")
    return py


def peer_versions(py: Path) -> dict:
    code = ("import json; from importlib.metadata import version as v, PackageNotFoundError\n"
            "def g(p):\n try: return v(p)\n except PackageNotFoundError: return None\n"
            f"print(json.dumps({{p: g(p) for p in {PEER_PACKAGES!r}}}))")
    return json.loads(subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True).stdout)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def launch(cmd: list[str], log_path: Path) -> subprocess.Popen:
    """A server in its own process group (Triton's children go with it)."""
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_model_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 120.0) -> float:
    start = time.time()
    while time.time() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{MODEL}/ready", timeout=1) as r:
                if r.status == 200:
                    return time.time() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s; see {log_path}")


def stop(proc: subprocess.Popen, timeout_s: float = 30.0) -> dict:
    """SIGTERM, then SIGKILL to the server's own process group if it has not exited in time."""
    start = time.time()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers (Triton's stubs) in the group it made
    except ProcessLookupError:
        pass
    proc.wait()
    return {"returncode": proc.returncode, "seconds": round(time.time() - start, 2)}


def grpc_target(address: str):
    """The gRPC load generator of `modelpress loadtest --protocol grpc` (acts like `loadtest.Target`
    under `loadtest.closed_loop`: open, prepare, send, body, batch); None in a checkout without it,
    and the gRPC series and target are then "not measured"."""
    make = getattr(loadtest, "GrpcTarget", None)
    return make(address, MODEL) if make else None


def start_servers(model: Path, args, work: Path, peers_py: Path | None) -> dict:
    """{name: {"url", "proc", "log", ...}} for modelpress and (with peers_py) Triton and KServe."""
    servers, onnx = {}, str(runtime.onnx_file(model))
    repo = work / "modelpress-repo"
    serving.deploy(model, repo, batching=True, instances=args.instances, delay_us=args.max_queue_delay_us)
    config = repository.read_config(repo, MODEL)
    batching = {"max_batch_size": config.max_batch_size,
                "preferred_batch_size": list(config.dynamic_batching.preferred_batch_size),
                "max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_microseconds,
                "instances": args.instances, "threads_per_instance": args.threads}
    port, mport = free_port(), free_port()
    cmd = [sys.executable, "-m", "modelpress", "serve", "--repository", str(repo), "--http-port", str(port),
           "--metrics-port", str(mport), "--threads", str(args.threads)]
    grpc_port = free_port() if serving.modelpress_grpc_flag() else None
    cmd += ["--grpc-port", str(grpc_port)] if grpc_port else []
    servers[HTTP] = {"url": f"http://127.0.0.1:{port}", "config": {**batching, "grpc_port": grpc_port},
                     "proc": launch(cmd, work / "modelpress.log"), "log": work / "modelpress.log"}
    if peers_py:
        port = free_port()
        cmd = [str(peers_py), str(ROOT / "benchmarks" / "peers" / "triton_server.py"), "--onnx", onnx,
               "--name", MODEL, "--port", str(port), "--instances", str(args.instances), "--threads",
               str(args.threads), "--max-batch-size", str(batching["max_batch_size"]),
               "--preferred", ",".join(map(str, batching["preferred_batch_size"])),
               "--max-queue-delay-us", str(batching["max_queue_delay_microseconds"])]
        servers[TRITON] = {"url": f"http://127.0.0.1:{port}", "config": {**batching, "backend": "python (pytriton)"},
                           "proc": launch(cmd, work / "triton.log"), "log": work / "triton.log"}
        port = free_port()
        cmd = [str(peers_py), str(ROOT / "benchmarks" / "peers" / "kserve_server.py"), "--onnx", onnx,
               "--name", MODEL, "--port", str(port), "--instances", str(args.instances), "--threads",
               str(args.threads)]
        servers[KSERVE] = {"url": f"http://127.0.0.1:{port}", "proc": launch(cmd, work / "kserve.log"),
                           "config": {"batching": None, "instances": args.instances,
                                      "threads_per_instance": args.threads,
                                      "how": "async predict, a thread pool of one session per instance"},
                           "log": work / "kserve.log"}
    for name, s in servers.items():
        try:
            s["ready_s"] = wait_model_ready(s["url"], s["proc"], s["log"])
            s["server"] = get_json(s["url"] + "/v2")
        except BaseException:
            for other in servers.values():
                stop(other["proc"])
            raise
        log(f"{name} ready in {s['ready_s']:.1f} s at {s['url']} ({s['server'].get('name')} "
            f"{s['server'].get('version')})")
    return servers


class TimedTarget:
    """A load-generator target that keeps (start, status, seconds) of every send, so windows can
    be pooled request by request; closed_loop itself only returns percentiles."""

    def __init__(self, inner):
        self.inner, self.records = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def send(self, *args, **kwargs) -> int:
        t0 = time.perf_counter()
        status = await self.inner.send(*args, **kwargs)
        self.records.append((t0, status, time.perf_counter() - t0))
        return status


def load_window(target: TimedTarget, c: int, window_s: float, warmup_s: float) -> tuple[LevelResult, list]:
    target.records = []
    r = asyncio.run(loadtest.closed_loop(target, c, window_s, warmup_s))
    # closed_loop measures the requests started in its window, and starts none after it:
    # the last r.requests sends by start time
    kept = sorted(target.records, key=lambda rec: rec[0])[len(target.records) - r.requests:] if r.requests else []
    return r, [(status, lat) for _, status, lat in kept]


def bare_window(sess, feed: dict, window_s: float) -> tuple[LevelResult, list]:
    sess.run(None, feed)  # untimed: the first call after a pause
    samples, start = [], time.perf_counter()
    while time.perf_counter() - start < window_s:
        t0 = time.perf_counter()
        sess.run(None, feed)
        samples.append((200, time.perf_counter() - t0))
    seconds = time.perf_counter() - start
    return LevelResult("bare", 1, 1, len(samples), len(samples), {}, seconds, len(samples) / seconds,
                       len(samples) / seconds, loadtest.latency_summary([s for _, s in samples])), samples


def measure_level(runners: dict, c: int, args) -> dict:
    """Windows interleaved across runners until each has a stable run (or --max-windows)."""
    windows = {n: [] for n in runners}
    for w in range(args.max_windows):
        for name, run in runners.items():
            time.sleep(args.settle)
            r, samples = run()
            windows[name].append((r, samples))
            log(f"c={c} window {w + 1} {name:18s} {loadtest.format_row(r)}")
        runs = {n: benchmarking.best_run([(r.latency_ms.get("p50", float("inf")), r.throughput_rps)
                                          for r, _ in ws], 3, args.tolerance) for n, ws in windows.items()}
        if w + 1 >= 3 and all(stable for _, stable, _ in runs.values()):
            break
    out = {}
    for name, ws in windows.items():
        first, stable, p50_spread = runs[name]
        pool = ws[first:first + 3]
        ok = [lat for _, samples in pool for status, lat in samples if status == 200]
        seconds = sum(r.seconds for r, _ in pool)
        errors: dict = {}
        for r, _ in ws:  # errors of every window, pooled or not
            for k, v in r.errors.items():
                errors[k] = errors.get(k, 0) + v
        pooled = LevelResult("concurrency", c, 1, sum(len(s) for _, s in pool), len(ok), errors, seconds,
                             len(ok) / seconds, len(ok) / seconds, loadtest.latency_summary(ok))
        out[name] = {"pooled": pooled, "stable": stable, "p50_spread": p50_spread,
                     "pooled_windows": [first, min(first + 3, len(ws))], "errors_counted_over": "every window",
                     "windows": [{"ok": r.ok, "errors": r.errors, "throughput_rps": r.throughput_rps,
                                  "p50_ms": r.latency_ms.get("p50"), "p99_ms": r.latency_ms.get("p99")}
                                 for r, _ in ws]}
    return out


def targets(levels: dict) -> list[dict]:
    """The issue's targets, each with its measured value (None: that series was not measured)."""
    def get(c, name, key=None):
        row = levels.get(str(c), {}).get(name)
        if not row:
            return None
        p = row["pooled"]
        return p["throughput_rps"] if key is None else p["latency_ms"].get(key)

    def ratio(a, b):
        return a / b if a is not None and b else None

    def diff(a, b):
        return a - b if a is not None and b is not None else None

    checks = []
    for peer in (TRITON, KSERVE):
        checks.append((f"c=16 throughput, modelpress HTTP / {peer}", ratio(get(16, HTTP), get(16, peer)), ">=", 1.5))
        checks.append((f"c=16 p99 ms, modelpress HTTP minus {peer}", diff(get(16, HTTP, "p99"), get(16, peer, "p99")),
                       "<=", 0.0))
    for name in (HTTP, GRPC):
        checks.append((f"c=1 p50 ms, {name} minus bare session.run", diff(get(1, name, "p50"), get(1, BARE, "p50")),
                       "<=", 0.3))
    return [{"target": t, "measured": v, "bar": f"{op} {bar}",
             "met": None if v is None else bool(v >= bar if op == ">=" else v <= bar)} for t, v, op, bar in checks]


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# modelpress beside Triton and KServe", "", f"Command: `{doc['command']}`", "",
             f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, flags {' '.join(m['cpu_flags'])}; load generator "
             "on the same cores.", "",
             f"Model: {doc['model']} (fp32 ONNX). Versions: modelpress {doc['modelpress_commit']}, onnxruntime "
             f"{m['versions']['onnxruntime']} (modelpress); peers venv: "
             + ", ".join(f"{k} {v}" for k, v in doc["peer_versions"].items() if v) + "; servers' own `/v2`: "
             + ", ".join(f"{n}: {s.get('name')} {s.get('version')}" for n, s in doc["servers"].items()) + ".", "",
             "ONNX Runtime threads (instances x intra-op threads): "
             + "; ".join(f"{n}: {c.get('instances')} x {c.get('threads_per_instance')}" for n, c in
                         doc["server_config"].items()) + f"; bare session.run: 1 x {doc['settings']['threads']}. "
             f"Batching (modelpress and Triton): {doc['batching']}. KServe: none (no batcher in its Python server). "
             "Triton runs the model in its Python backend (the pytriton bundle has no ONNX Runtime backend): each "
             "batch goes from Triton's stub process to the bound function over shared memory.", "",
             f"Windows: {doc['settings']}.", "", f"gRPC: {doc['grpc']}", ""]
    rows, labels = [], []
    for c, level in doc["levels"].items():
        for name, row in level.items():
            rows.append(LevelResult(**row["pooled"]))
            labels.append(name + ("" if row["stable"] else f" (unstable: p50 spread {row['p50_spread']:.0%})"))
    lines += [loadtest.table(rows, labels), "", "## Targets", "", "| target | measured | bar | met |", "|---|---|---|---|"]
    for t in doc["targets"]:
        v = "not measured" if t["measured"] is None else f"{t['measured']:.2f}"
        met = "not measured" if t["met"] is None else ("met" if t["met"] else "not met")
        lines.append(f"| {t['target']} | {v} | {t['bar']} | {met} |")
    return "\n".join(lines) + "\n"


def infer_grpc_once(address: str, x: np.ndarray, name: str) -> dict:
    """One ModelInfer with raw contents (what tritonclient.grpc sends) through modelpress's gRPC codec."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    from modelpress.serving.grpc.codec import infer_request
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        response = call(infer_request(MODEL, {name: x}), timeout=30)
    return {o.name: np.frombuffer(raw, np.float32).reshape(list(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents)}


def infer_once(url: str, x: np.ndarray, name: str) -> dict:
    body, headers = binary_request({name: x})
    req = urllib.request.Request(f"{url}/v2/models/{MODEL}/infer", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return decode_infer_response(r.read(), r.headers.get("Inference-Header-Content-Length"))


def smoke(model: Path, args, work: Path, peers_py: Path) -> int:
    """Each server starts, answers one v2 binary infer (3 rows) with ONNX Runtime's own logits, and stops."""
    sess = runtime.session(model, threads=args.threads)
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(1).random([3, *inp.shape[1:]]).astype(np.float32)
    want = sess.run(None, {inp.name: x})[0]
    servers = start_servers(model, args, work, peers_py)
    failed = 0
    try:
        grpc_port = servers[HTTP]["config"]["grpc_port"]
        checks = [(n, s, lambda s=s: infer_once(s["url"], x, inp.name)) for n, s in servers.items()]
        if grpc_port and getattr(loadtest, "GrpcTarget", None):
            checks.insert(1, (GRPC, servers[HTTP], lambda: infer_grpc_once(f"127.0.0.1:{grpc_port}", x, inp.name)))
        for name, s, infer in checks:
            try:
                got = next(iter(infer().values()))
            except Exception as exc:  # noqa: BLE001 - reported, and the other servers still checked
                failed += 1
                log(f"smoke {name}: WRONG: the infer failed: {exc}")
                continue
            diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
            ok = diff <= 1e-4
            failed += not ok
            log(f"smoke {name}: ready {s['ready_s']:.1f} s, logits {list(got.shape)} max |diff| vs direct ORT "
                f"{diff:.2e} {'ok' if ok else 'WRONG'}; {s['server'].get('name')} {s['server'].get('version')}")
    finally:
        for name, s in servers.items():
            st = stop(s["proc"])
            log(f"smoke {name}: stopped in {st['seconds']} s, exit {st['returncode']}")
    if GRPC not in [n for n, _, _ in checks]:
        log("smoke modelpress gRPC: not checked (`modelpress serve --grpc-port` / `loadtest.GrpcTarget` absent)")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", action="store_true", help="(how benchmarks/serving.py routes here)")
    p.add_argument("--smoke", action="store_true", help="only start each server, check one infer, stop it")
    p.add_argument("--model", type=Path, default=ROOT / "build" / "bench-compression" / "teacher-onnx")
    p.add_argument("--concurrency", default="1,16")
    p.add_argument("--window", type=float, default=3.0, help="measured seconds per window")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each window")
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--settle", type=float, default=0.2, help="idle seconds before each window")
    p.add_argument("--instances", type=int, default=2, help="instances per server (modelpress, Triton, KServe)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per instance")
    p.add_argument("--max-queue-delay-us", type=int, default=0)
    p.add_argument("--no-peers", action="store_true", help="modelpress and the floor only (no peers venv needed)")
    p.add_argument("--peers-venv", type=Path, default=PEERS_VENV)
    p.add_argument("--work-dir", type=Path, default=ROOT / "build" / "bench-serving-peers")
    p.add_argument("--output", type=Path, default=RESULTS / "serving-peers.json")
    args = p.parse_args(argv)
    peers_py = None if args.no_peers else peers_python(args.peers_venv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.smoke:  # the given model if it exists, else a small generated MLP (no training)
        model = args.model if (args.model / runtime.ONNX_FILE).exists() else serving.dense_mlp(
            args.work_dir / "smoke-mlp", widths=(256, 10), image=(3, 16, 16))
        return smoke(model, args, args.work_dir, peers_py)
    model = serving.ensure_model(args.model)
    levels = [int(c) for c in args.concurrency.split(",")]
    sess = runtime.session(model, threads=args.threads)
    inp = sess.get_inputs()[0]
    feed = {inp.name: np.random.default_rng(0).random([1, *inp.shape[1:]]).astype(np.float32)}
    servers = start_servers(model, args, args.work_dir, peers_py)
    grpc = None
    if servers[HTTP]["config"]["grpc_port"]:
        grpc = grpc_target(f"127.0.0.1:{servers[HTTP]['config']['grpc_port']}")
    grpc_note = ("measured: modelpress loadtest's gRPC generator against the same modelpress process" if grpc else
                 "not measured: `modelpress serve --grpc-port` and `loadtest.GrpcTarget` (modelpress loadtest "
                 "--protocol grpc) not both present in this checkout")
    targets_by = {HTTP: TimedTarget(loadtest.Target(servers[HTTP]["url"], MODEL))}
    if grpc:
        targets_by[GRPC] = TimedTarget(grpc)
    for name in (TRITON, KSERVE):
        if name in servers:
            targets_by[name] = TimedTarget(loadtest.Target(servers[name]["url"], MODEL))
    results = {}
    try:
        for c in levels:
            runners = {n: (lambda t=t: load_window(t, c, args.window, args.warmup)) for n, t in targets_by.items()}
            if c == 1:
                runners[BARE] = lambda: bare_window(sess, feed, args.window)
            results[str(c)] = measure_level(runners, c, args)
    finally:
        stopped = {name: stop(s["proc"]) for name, s in servers.items()}
    levels_json = {c: {n: {**row, "pooled": loadtest.to_json([row["pooled"]])[0]} for n, row in lv.items()}
                   for c, lv in results.items()}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    doc = {"command": "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "model": str(model), "machine": benchmarking.machine(args.threads), "modelpress_commit": commit,
           "peer_versions": peer_versions(peers_py) if peers_py else {},
           "servers": {n: s["server"] for n, s in servers.items()},
           "server_config": {n: s["config"] for n, s in servers.items()},
           "batching": {k: v for k, v in servers[HTTP]["config"].items() if k not in ("instances", "grpc_port",
                                                                                     "threads_per_instance")},
           "settings": {"levels": levels, "window_s": args.window, "warmup_s": args.warmup, "settle_s": args.settle,
                        "stable_windows": 3, "tolerance": args.tolerance, "max_windows": args.max_windows,
                        "threads": args.threads, "instances": args.instances},
           "grpc": grpc_note, "stopped": stopped, "levels": levels_json}
    doc["targets"] = targets(levels_json)
    benchmarking.write_results(args.output, doc, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
