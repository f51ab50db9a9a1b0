"""The baseline: a model API the way a first FastAPI/Flask version is written.

One HTTP request = one `session.run`, in a worker thread (what FastAPI does with a plain
`def` endpoint), on one ONNX Runtime session with its default settings; no batching, no
queue limit. It speaks the same KServe v2 infer route (reusing modelpress's codec) so the
same load generator drives it and only the serving model differs.

    python benchmarks/naive_server.py --model DIR_OR_ONNX --port 8300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402
import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from modelpress.export.runtime import onnx_file  # noqa: E402
from modelpress.serving.protocol import BINARY_HEADER, encode_infer, parse_infer  # noqa: E402


def build(model_path: str, name: str) -> Starlette:
    session = ort.InferenceSession(str(onnx_file(model_path)), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]
    input_meta = [{"name": i.name, "datatype": "FP32", "shape": [-1, *i.shape[1:]]} for i in session.get_inputs()]

    def predict(body: bytes, header: str | None) -> Response:
        req = parse_infer(body, header)
        outputs = dict(zip(output_names, session.run(output_names, req.inputs)))
        payload, headers = encode_infer(name, "1", req.id, outputs,
                                        set(outputs) if req.binary_default else req.binary_outputs)
        return Response(payload, headers=headers)

    async def infer(request):
        body = await request.body()
        return await run_in_threadpool(predict, body, request.headers.get(BINARY_HEADER))

    async def metadata(request):
        import orjson
        return Response(orjson.dumps({"name": name, "versions": ["1"], "platform": "onnxruntime_onnx",
                                      "inputs": input_meta, "outputs": []}), media_type="application/json")

    async def ready(request):
        return Response(status_code=200)

    return Starlette(routes=[Route(f"/v2/models/{name}", metadata), Route("/v2/health/ready", ready),
                             Route(f"/v2/models/{name}/infer", infer, methods=["POST"])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--name", default="ref")
    p.add_argument("--port", type=int, default=8300)
    args = p.parse_args()
    uvicorn.run(build(args.model, args.name), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
