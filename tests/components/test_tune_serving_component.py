"""The tune-serving step in a real kfp.local pipeline: after a deploy it measures real servers on
127.0.0.1, writes the chosen config into the repository and leaves its report as artifacts."""

import json

import pytest

from components.tune_serving import tune_serving
from modelpress.deploy import repository
from tests.serving.conftest import deploy_tiny


@pytest.mark.filterwarnings("ignore:.*non-Python base image")  # the image is for Vertex; this runs in .venv
def test_tune_serving_step_measures_writes_and_reports(tmp_path):
    from kfp import dsl, local

    repo = tmp_path / "repo"
    version = deploy_tiny(repo, tmp_path, max_batch_size=16, instances=1)
    before = (repo / "tiny" / repository.CONFIG_FILE).read_text()

    @dsl.pipeline(name="tune-check")
    def check(repository: str, version: int):
        tune_serving(repository=repository, model_name="tiny", deployed_version=version, concurrency=2,
                     duration_s=0.5, max_points=2, search="quick")

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    check(repository=str(repo), version=version)
    task_dir = next((tmp_path / "runs").glob("tune-check-*/tune-serving"))
    assert {p.name for p in (task_dir / "tuning").iterdir()} >= {"tuning.json", "tuning.md", "tuning.png"}
    report = json.loads((task_dir / "tuning" / "tuning.json").read_text())
    assert report["model"] == "tiny" and len(report["points"]) == 2  # the current config and one neighbour
    assert "| " in (task_dir / "table").read_text()  # the Markdown table the UI shows
    outputs = json.loads(next(task_dir.glob("**/executor_output.json")).read_text())
    metrics = outputs["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["current_throughput_rps"] > 0 and metrics["chosen_throughput_rps"] > 0
    after = (repo / "tiny" / repository.CONFIG_FILE).read_text()
    note = outputs["parameterValues"]["Output"]
    # written when the neighbour won, else unchanged; either way the file parses and says what happened
    assert (after != before) == report["written"] and note == report["write_note"]
    assert repository.read_config(repo, "tiny").name == "tiny"


def test_the_local_optimise_pipeline_tunes_after_deploy_only_when_asked(tmp_path):
    import yaml

    from pipelines.compile import compile_pipeline
    from pipelines.targets import Target

    spec = yaml.safe_load(compile_pipeline("optimise", Target(), tmp_path).read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["tune_serving"]["defaultValue"] is False  # off by default
    # inside the blessed branch, beside deploy-local: a condition on the parameter, then the step
    blessed = next(c for c in spec["components"].values() if "deploy-local" in c.get("dag", {}).get("tasks", {}))
    (tune,) = [t for name, t in blessed["dag"]["tasks"].items() if name != "deploy-local"]
    assert tune["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--tune_serving'] == true"
    inner = spec["components"][tune["componentRef"]["name"]]["dag"]["tasks"]["tune-serving"]
    assert inner["inputs"]["parameters"]["deployed_version"] == {
        "componentInputParameter": "pipelinechannel--deploy-local-Output"}  # after the deploy, its version


def test_tune_serving_on_vertex_is_refused_with_the_alternative():
    from pathlib import Path

    from modelpress.core.errors import ModelpressError
    from pipelines import settings

    root = Path(__file__).resolve().parents[2]
    cfg = settings.load("vertex", root / "configs" / "vertex.yaml", image_tag="abc1234")
    assert cfg.pipeline_parameters("optimise", {"tune_serving": False}) is not None
    with pytest.raises(ModelpressError, match="on Vertex AI is not the endpoint's: run `modelpress tune-serving`"):
        cfg.pipeline_parameters("optimise", {"tune_serving": True})
    local = settings.load("local", root / "configs" / "local.yaml")
    with pytest.raises(ModelpressError, match="tune_search must be quick"):
        local.pipeline_parameters("optimise", {"tune_search": "brute"})
