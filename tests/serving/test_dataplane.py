"""The data plane answers without any transport; the REST app adds Vertex's routes only in Vertex mode."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import numpy as np
import pytest

from modelpress.serving import protocol
from modelpress.serving.errors import ClientError, ServerError, answer
from modelpress.serving.settings import ServeSettings

from .conftest import deploy_tiny, expected_logits

SERVING = Path(__file__).resolve().parents[2] / "modelpress" / "serving"
TRANSPORTS = {"starlette", "uvicorn", "grpc", "aiohttp", "httptools"}


@pytest.mark.parametrize("module", ["dataplane", "errors", "store", "batching", "postprocess", "protocol", "settings"])
def test_the_data_plane_knows_no_transport(module):
    tree = ast.parse((SERVING / f"{module}.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m.split(".")[0] for m in imported} & TRANSPORTS
    assert not any(m.startswith("modelpress.serving.rest") for m in imported)


def test_errors_map_to_one_status_whatever_the_transport():
    assert answer(ClientError("bad")) == (400, "bad", {})
    assert answer(ClientError("gone", status=404)) == (404, "gone", {})
    assert answer(ServerError("busy", status=503, headers={"Retry-After": "1"})) == (503, "busy", {"Retry-After": "1"})
    assert answer(ServerError("broke")) == (500, "broke", {})
    assert answer(ValueError("odd")) == (500, "internal error: ValueError: odd", {})


def test_infer_metadata_and_statistics_on_decoded_requests(tmp_path):
    from modelpress.serving.dataplane import DataPlane
    from modelpress.serving.store import ModelStore

    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, max_batch_size=8)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)

    async def main():
        plane = DataPlane(ModelStore(repo), ServeSettings())
        async with plane.running():
            assert plane.not_ready_reason() is None and plane.model_names() == ["tiny"]
            result = await plane.infer(plane.model("tiny"), protocol.parse_infer(protocol.json_request({"input": x}),
                                                                                  None))
            with pytest.raises(ClientError) as err:
                plane.model("nope")
            return plane, result, err.value.status

    plane, result, status = asyncio.run(main())
    assert status == 404
    assert (result.model.name, result.model.version, list(result.outputs)) == ("tiny", 1, ["logits"])
    np.testing.assert_allclose(result.outputs["logits"], expected_logits(x), rtol=1e-5, atol=1e-5)
    assert plane.model_metadata("tiny")["versions"] == ["1"]
    assert plane.model_config("tiny").max_batch_size == 8
    stats = plane.statistics("tiny")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 1 and stats["inference_count"] == 3
    assert plane.repository_index() == [{"name": "tiny", "version": "1", "state": "READY", "reason": ""}]


def test_vertex_routes_only_in_vertex_mode(tmp_path):
    from modelpress.serving.dataplane import DataPlane
    from modelpress.serving.rest.app import build_app
    from modelpress.serving.store import ModelStore

    store = ModelStore(tmp_path)
    plain = {r.path for r in build_app(DataPlane(store, ServeSettings())).routes}
    vertex = {r.path for r in build_app(DataPlane(store, ServeSettings(vertex_health_route="/health",
                                                                       vertex_predict_route="/predict"))).routes}
    assert "/v2/models/{model}/infer" in plain and not {"/health", "/predict"} & plain
    assert vertex - plain == {"/health", "/predict"}
