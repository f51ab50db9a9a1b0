"""NVIDIA Triton as a peer: the `tritonserver` that nvidia-pytriton bundles, KServe v2 over HTTP.

    build/peers-venv/bin/python benchmarks/peers/triton_server.py --onnx model.onnx --name ref \
        --port 8400 [--instances 2] [--threads 1] [--max-batch-size 64] [--preferred 8,32] \
        [--max-queue-delay-us 0]

Runs from build/peers-venv (benchmarks/peers/setup.sh), never from the project's .venv. The
bundled Triton has only the Python backend, so the model is a Python function running an ONNX
Runtime session of the same ONNX file, bound with Triton's dynamic batcher in front
(`max_batch_size`, `DynamicBatcher(max_queue_delay_microseconds, preferred_batch_size)`, as
modelpress's deploy step writes them) and `--instances` model instances (one function, so one
session of `--threads` intra-op threads, each). Triton's HTTP endpoint is bound to 127.0.0.1;
gRPC and metrics are off (gRPC stays on 127.0.0.1 where it is asked for with --grpc-port).

The Python backend's stub links libpython: LD_LIBRARY_PATH gets this Python's LIBDIR first, so
the stub embeds the same interpreter as the venv.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import sysconfig

from peer_session import session  # beside this script (its folder is sys.path[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True)
    p.add_argument("--name", default="ref")
    p.add_argument("--port", type=int, default=8400)
    p.add_argument("--grpc-port", type=int, default=0, help="0: no gRPC endpoint")
    p.add_argument("--instances", type=int, default=2, help="model instances (a session each)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per instance")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--preferred", default="8,32", help="preferred batch sizes, comma-separated")
    p.add_argument("--max-queue-delay-us", type=int, default=0)
    args = p.parse_args()

    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = ":".join(x for x in (libdir, os.environ.get("LD_LIBRARY_PATH")) if x)

    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    probe = session(args.onnx, args.threads)
    inputs = [(i.name, i.shape) for i in probe.get_inputs()]
    outputs = [(o.name, o.shape) for o in probe.get_outputs()]
    del probe

    def dims(shape) -> tuple:
        return tuple(d if isinstance(d, int) else -1 for d in shape[1:])

    def instance():
        sess = session(args.onnx, args.threads)
        names = [n for n, _ in outputs]

        @batch  # Triton's batch arrives as one request per input, stacked on the batch axis
        def infer(**feed):
            return dict(zip(names, sess.run(names, {n: np.ascontiguousarray(feed[n], np.float32)
                                                    for n, _ in inputs})))
        return infer

    preferred = [int(b) for b in args.preferred.split(",") if b and int(b) <= args.max_batch_size]
    config = TritonConfig(http_address="127.0.0.1", http_port=args.port,
                          allow_grpc=bool(args.grpc_port), grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port or None, allow_metrics=False, log_verbose=0, exit_timeout_secs=5,
                          exit_on_error=True)
    logging.basicConfig(level=logging.WARNING)
    triton = Triton(config=config)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        triton.bind(model_name=args.name, infer_func=[instance() for _ in range(args.instances)],
                    inputs=[Tensor(name=n, dtype=np.float32, shape=dims(s)) for n, s in inputs],
                    outputs=[Tensor(name=n, dtype=np.float32, shape=dims(s)) for n, s in outputs],
                    config=ModelConfig(max_batch_size=args.max_batch_size,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us,
                                                              preferred_batch_size=preferred or None)),
                    strict=False)
        triton.serve()  # returns on SIGINT (and SIGTERM, raised as KeyboardInterrupt above)
    finally:
        triton.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
