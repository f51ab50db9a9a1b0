"""export_edge as a component: in a real kfp.local pipeline behind a dsl.If (as optimise wires it),
and through `.python_func` when select chose nothing."""

import json
from pathlib import Path

import pytest
from kfp.dsl import Dataset, Markdown, Metrics, Model

from components.export_edge import export_edge


def _art(cls, path):
    return cls(name=Path(path).name, uri=str(path), metadata={})


@pytest.mark.filterwarnings("ignore:.*non-Python base image")  # the image is for Vertex; this runs in .venv
def test_runs_in_a_kfp_local_pipeline(tmp_path, mlp_onnx_dir):
    from kfp import dsl, local

    from components.dataset import make_dataset

    @dsl.pipeline(name="edge-check")
    def check(model_uri: str, edge_export: bool):
        dataset = make_dataset(source="digits").outputs["dataset"]
        chosen = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=False)
        with dsl.If(edge_export == True, name="edge-export"):  # noqa: E712
            export_edge(model=chosen.output, dataset=dataset, window_seconds=0.05, max_windows=3, load_repeats=3)

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    check(model_uri=mlp_onnx_dir, edge_export=True)
    task_dir = next((tmp_path / "runs").glob("edge-check-*/export-edge"))
    assert {p.name for p in (task_dir / "edge_model").iterdir()} == {
        "model.onnx", "model.ort", "required_operators.config", "meta.json"}
    outputs = json.loads(next(task_dir.glob("**/executor_output.json")).read_text())["artifacts"]
    metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert metrics["ort_size_bytes"] > 0 and metrics["ort_load_ms"] > 0 and metrics["ort_p50_ms"] > 0
    assert metrics["argmax_agreement"] == 1.0
    assert outputs["edge_model"]["artifacts"][0]["metadata"]["edge"]["files"]["ort"] == "model.ort"
    assert "| model.ort |" in (task_dir / "table").read_text()


def test_nothing_chosen_writes_a_skip_note(tmp_path, digits_dir):
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "decision.json").write_text("{}")  # what select writes when no variant meets the constraints
    edge_model, metrics, table = (_art(Model, tmp_path / "edge"), _art(Metrics, tmp_path / "metrics"),
                                  _art(Markdown, tmp_path / "table"))
    export_edge.python_func(model=_art(Model, chosen), dataset=_art(Dataset, digits_dir), edge_model=edge_model,
                            metrics=metrics, table=table)
    assert json.loads((tmp_path / "edge" / "skipped.json").read_text())["step"] == "export-edge"
    assert edge_model.metadata["skipped"] is True and json.loads((tmp_path / "metrics").read_text()) == {}
    assert "select chose no model" in (tmp_path / "table").read_text()
