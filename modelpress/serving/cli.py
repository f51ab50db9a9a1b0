"""`modelpress serve`: its arguments, and the call that starts the server."""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, got {value}")
    return value


def add_serve(commands) -> None:
    p = commands.add_parser("serve", help="serve a Triton-layout model repository over the KServe v2 protocol",
                            description="Serve every model in a Triton-layout repository (what the deploy step "
                            "writes) over KServe v2 HTTP and gRPC (Triton's GRPCInferenceService), with dynamic "
                            "batching from each config.pbtxt, Prometheus metrics and version hot reload. In a "
                            "Vertex AI container (AIP_HTTP_PORT set) it binds that port and serves AIP_HEALTH_ROUTE "
                            "and AIP_PREDICT_ROUTE.")
    p.add_argument("--repository", help="model repository folder, or gs:// URI (default in Vertex: AIP_STORAGE_URI)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=_port, default=8001,
                   help="gRPC port (Triton's GRPCInferenceService, same models and batcher); 0 turns it off "
                   "(default 8001)")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics port; 0 turns it off")
    p.add_argument("--poll-seconds", type=float, default=5.0,
                   help="check the repository for new versions every N seconds; 0 loads once (default 5)")
    p.add_argument("--model", help="the model AIP_PREDICT_ROUTE serves (default: the only one in the repository)")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime intra-op threads per instance (default: cores / instances)")
    p.add_argument("--max-queue-rows", type=_positive_int, default=1024,
                   help="rows queued per model version before answering 503 (default 1024)")
    p.add_argument("--max-body-mb", type=float, default=16.0,
                   help="request body limit; 413 above it (and gRPC's message limit, both ways) (default 16)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds a request may wait; 504 after")
    p.set_defaults(run=_serve)


def _serve(args) -> int:
    from modelpress.serving.server import Listen, serve
    from modelpress.serving.settings import ServeSettings

    settings = ServeSettings(max_body_bytes=int(args.max_body_mb * 1024 * 1024), request_timeout_s=args.request_timeout,
                             poll_seconds=args.poll_seconds, vertex_model=args.model)
    serve(args.repository, Listen(args.host, args.http_port, args.metrics_port, args.grpc_port), settings,
          max_queue_rows=args.max_queue_rows, threads=args.threads)
    return 0
