"""KServe's Python model server as a peer: one ONNX file behind `kserve.ModelServer`, v2 over HTTP.

    build/peers-venv/bin/python benchmarks/peers/kserve_server.py --onnx model.onnx --name ref \
        --port 8500 [--instances 2] [--threads 1]

Runs from build/peers-venv (benchmarks/peers/setup.sh), never from the project's .venv. A
`kserve.Model` subclass whose async `predict` hands `session.run` to a pool of `--instances`
threads, each with its own ONNX Runtime session of `--threads` intra-op threads (the same
total threads as modelpress's instances; a plain sync `predict` would block the event loop
and use one session at a time). KServe's Python server has no batcher of its own (its batcher is
a sidecar on Kubernetes), so each request runs alone. Bound to 127.0.0.1 (KServe binds 0.0.0.0:
the uvicorn config is overridden); per-request latency logging is off, as modelpress logs
nothing per request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from peer_session import session  # beside this script (its folder is sys.path[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True)
    p.add_argument("--name", default="ref")
    p.add_argument("--port", type=int, default=8500)
    p.add_argument("--instances", type=int, default=2, help="sessions run at once (a thread each)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per session")
    args = p.parse_args()
    sys.argv = sys.argv[:1]  # kserve parses sys.argv when imported

    import numpy as np
    import uvicorn

    class Loopback(uvicorn.Config):
        def __init__(self, *a, **kw):
            kw["host"] = "127.0.0.1"
            super().__init__(*a, **kw)

    uvicorn.Config = Loopback  # kserve.protocol.rest.server builds uvicorn.Config(host="0.0.0.0")

    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    local = threading.local()
    probe = session(args.onnx, args.threads)
    inputs = [(i.name, i.shape) for i in probe.get_inputs()]
    outputs = [(o.name, o.shape) for o in probe.get_outputs()]
    del probe

    def run(feed: dict) -> list:
        if not hasattr(local, "sess"):
            local.sess = session(args.onnx, args.threads)
        return local.sess.run(None, feed)

    pool = ThreadPoolExecutor(args.instances, thread_name_prefix="ort")
    for f in [pool.submit(run, {n: np.zeros([1, *s[1:]], np.float32) for n, s in inputs})
              for _ in range(args.instances * 4)]:
        f.result()  # every thread's session made before the server answers ready

    def dims(shape) -> list[int]:
        return [-1] + [d if isinstance(d, int) else -1 for d in shape[1:]]

    class OnnxModel(kserve.Model):
        def __init__(self, name: str):
            super().__init__(name)
            self.ready = True

        def get_input_types(self):  # what GET /v2/models/{m} lists (the load generator reads it)
            return [{"name": n, "datatype": "FP32", "shape": dims(s)} for n, s in inputs]

        def get_output_types(self):
            return [{"name": n, "datatype": "FP32", "shape": dims(s)} for n, s in outputs]

        async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
            feed = {i.name: i.as_numpy() for i in payload.inputs}
            results = await asyncio.get_running_loop().run_in_executor(pool, run, feed)
            out = []
            for (name, _), array in zip(outputs, results):
                o = InferOutput(name=name, shape=list(array.shape), datatype="FP32")
                o.set_data_from_numpy(array, binary_data=payload.use_binary_outputs)
                out.append(o)
            return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=out,
                                 use_binary_outputs=payload.use_binary_outputs)

    server = kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1, enable_latency_logging=False)
    for name in ("kserve.trace", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([OnnxModel(args.name)])


if __name__ == "__main__":
    main()
