"""`modelpress loadtest`: its arguments, the results table on stdout, JSON and a plot on request."""

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


def add_loadtest(commands) -> None:
    p = commands.add_parser("loadtest", help="measure a KServe v2 server: concurrency sweeps or a fixed rate",
                            description="Closed-loop concurrency sweeps (--concurrency) and an open-loop fixed-rate "
                            "mode (--rate) that does not hide tail latency, over HTTP (binary tensors by default) "
                            "or gRPC (--protocol grpc: Triton's GRPCInferenceService, raw tensor contents).")
    p.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000; with --protocol grpc, host:port "
                   "(e.g. 127.0.0.1:8001)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="http",
                   help="http: KServe v2 REST (default); grpc: GRPCInferenceService.ModelInfer")
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
    from modelpress import loadtest
    from modelpress.core.fileio import write_json_atomic

    if args.rate is not None and args.rate <= 0:
        raise SystemExit("modelpress loadtest: error: --rate must be > 0")
    if args.protocol == "grpc" and args.json_tensors:
        raise SystemExit("modelpress loadtest: error: --json-tensors is for HTTP; gRPC sends raw tensor contents")
    # the table on stdout (header first, a row per level as it finishes); progress on stderr
    results = loadtest.run(args.url, args.model, concurrency=args.concurrency, rate=args.rate,
                           duration_s=args.duration, warmup_s=args.warmup, batch=args.batch,
                           binary=not args.json_tensors, version=args.version, protocol=args.protocol,
                           progress=lambda line: print(line, file=sys.stderr, flush=True),
                           emit=lambda line: print(line, flush=True))
    if args.output:
        write_json_atomic(args.output, {"url": args.url, "protocol": args.protocol, "model": args.model,
                                        "results": loadtest.to_json(results)})
        print(f"wrote {args.output}")
    if args.plot:
        loadtest.plot({args.model: results}, str(args.plot))
        print(f"wrote {args.plot}")
    return 0 if all(not r.errors for r in results) else 1
