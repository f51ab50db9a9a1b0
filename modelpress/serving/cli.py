"""`modelpress serve` and `modelpress loadtest` arguments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4,16,64, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return levels


def add_serve(commands) -> None:
    p = commands.add_parser("serve", help="serve a Triton-layout model repository over the KServe v2 protocol",
                            description="Serve every model in a Triton-layout repository (what the deploy step "
                            "writes) over KServe v2 HTTP, with dynamic batching from each config.pbtxt, "
                            "Prometheus metrics and version hot reload. In a Vertex AI container (AIP_HTTP_PORT "
                            "set) it binds that port and serves AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE.")
    p.add_argument("--repository", help="model repository folder, or gs:// URI (default in Vertex: AIP_STORAGE_URI)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics port; 0 turns it off")
    p.add_argument("--poll-seconds", type=float, default=5.0,
                   help="check the repository for new versions every N seconds; 0 loads once (default 5)")
    p.add_argument("--model", help="the model AIP_PREDICT_ROUTE serves (default: the only one in the repository)")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime intra-op threads per instance (default: cores / instances)")
    p.add_argument("--max-queue-rows", type=_positive_int, default=1024,
                   help="rows queued per model version before answering 503 (default 1024)")
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit; 413 above it (default 16)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds a request may wait; 504 after")
    p.set_defaults(run=_serve)


def _serve(args) -> int:
    from modelpress.serving.app import ServeSettings
    from modelpress.serving.server import Listen, serve

    settings = ServeSettings(max_body_bytes=int(args.max_body_mb * 1024 * 1024), request_timeout_s=args.request_timeout,
                             poll_seconds=args.poll_seconds, vertex_model=args.model)
    serve(args.repository, Listen(args.host, args.http_port, args.metrics_port), settings,
          max_queue_rows=args.max_queue_rows, threads=args.threads)
    return 0


def add_loadtest(commands) -> None:
    p = commands.add_parser("loadtest", help="measure a KServe v2 server: concurrency sweeps or a fixed rate",
                            description="Closed-loop concurrency sweeps (--concurrency) and an open-loop fixed-rate "
                            "mode (--rate) that does not hide tail latency. Binary tensors by default.")
    p.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--version", help="model version (default: the server's choice)")
    p.add_argument("--concurrency", type=_levels, help="comma-separated client counts (default 1,4,16,64)")
    p.add_argument("--rate", type=float, help="open loop: requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per level (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level (default 2)")
    p.add_argument("--batch", type=_positive_int, default=1, help="rows per request (default 1)")
    p.add_argument("--json-tensors", action="store_true", help="send JSON tensors instead of binary")
    p.add_argument("--output", type=Path, help="write results as JSON here")
    p.add_argument("--plot", type=Path, help="write a latency-vs-throughput plot (PNG) here")
    p.set_defaults(run=_loadtest)


def _loadtest(args) -> int:
    from modelpress.core.fileio import write_json_atomic
    from modelpress.serving import loadtest

    if args.rate is not None and args.rate <= 0:
        raise SystemExit("modelpress loadtest: error: --rate must be > 0")
    # the table on stdout (header first, a row per level as it finishes); progress on stderr
    results = loadtest.run(args.url, args.model, concurrency=args.concurrency, rate=args.rate,
                           duration_s=args.duration, warmup_s=args.warmup, batch=args.batch,
                           binary=not args.json_tensors, version=args.version,
                           progress=lambda line: print(line, file=sys.stderr, flush=True),
                           emit=lambda line: print(line, flush=True))
    if args.output:
        write_json_atomic(args.output, {"url": args.url, "model": args.model, "results": loadtest.to_json(results)})
        print(f"wrote {args.output}")
    if args.plot:
        loadtest.plot({args.model: results}, str(args.plot))
        print(f"wrote {args.plot}")
    return 0 if all(not r.errors for r in results) else 1
