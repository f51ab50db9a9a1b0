"""Batch prediction on Vertex AI: the registered champion as GCPC's VertexModel, and the
`batch_prediction:` block. The Model Registry is test_vertex.py's in-memory fake; the requests
are asserted field by field."""

import pytest
from kfp.dsl import Artifact

from components.vertex_model import vertex_model
from modelpress.core.errors import ModelpressError
from modelpress.deploy.vertex import batch_job
from tests.pipelines.test_vertex import PARENT, _deploy, fake_vertex, gcs  # noqa: F401 (fixtures)


def test_the_champion_of_the_registered_model_is_what_the_job_scores_with(fake_vertex, gcs, mlp_onnx_dir):
    _deploy(mlp_onnx_dir, gcs, "run1")
    _deploy(mlp_onnx_dir, gcs, "run2")  # version 2 is the champion now
    (registered,) = fake_vertex.models
    out = Artifact(name="model", uri="gs://bucket/run3/vertex-model/model", metadata={})
    resource = vertex_model.python_func(model=out, project="my-project", location="europe-west4",
                                        model_display_name="modelpress-digits", version=0)
    assert resource == f"{registered}@champion" == out.metadata["resourceName"]
    assert out.uri == f"https://europe-west4-aiplatform.googleapis.com/v1/{registered}@champion"
    lookup = fake_vertex.requests("list_models")[-1]
    assert (lookup.parent, lookup.filter) == (PARENT, 'display_name="modelpress-digits"')
    assert batch_job.model_version("my-project", "europe-west4", "modelpress-digits", "2") == f"{registered}@2"


def test_scoring_before_anything_is_registered_names_the_fix(fake_vertex):
    with pytest.raises(ModelpressError, match="no model named 'modelpress-digits'.*deploy one first"):
        batch_job.model_version("my-project", "europe-west4", "modelpress-digits")


@pytest.mark.parametrize("change, message", [
    ({"starting_replica_count": 3, "max_replica_count": 2}, "starting_replica_count <= max_replica_count"),
    ({"instances_format": "parquet"}, "instances_format must be one of \\['jsonl'\\]"),
    ({"predictions_format": "bigquery"}, "predictions_format must be one of \\['jsonl'\\]"),
    ({"accelerator_type": "NVIDIA_L4"}, "accelerator_count >= 1"),
])
def test_batch_prediction_settings_are_checked(change, message):
    with pytest.raises(ModelpressError, match=message):
        batch_job.BatchPrediction(**change).validate()


def _vertex(tmp_path, **batch):
    import yaml

    from tests.pipelines.test_vertex import ROOT

    data = yaml.safe_load((ROOT / "configs" / "vertex.yaml").read_text())
    data["batch_prediction"].update(batch)
    path = tmp_path / "vertex.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_vertex_compile_holds_the_batch_prediction_job_with_the_configured_machines(tmp_path):
    import yaml

    from pipelines import settings
    from pipelines.compile import compile_pipeline

    cfg = settings.load("vertex", _vertex(tmp_path, machine_type="n1-highmem-8", starting_replica_count=2,
                                          max_replica_count=5), image_tag="abc1234")
    spec = yaml.safe_load(compile_pipeline("batch_prediction", cfg.target, tmp_path).read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"vertex-model", "model-batch-predict"}  # no local batch-predict step
    constant = lambda task: {k: v["runtimeValue"]["constant"] for k, v in tasks[task]["inputs"]["parameters"].items()
                             if "runtimeValue" in v}
    job, wired = constant("model-batch-predict"), tasks["model-batch-predict"]["inputs"]
    assert (job["machine_type"], job["starting_replica_count"], job["max_replica_count"]) == ("n1-highmem-8", 2, 5)
    assert (job["instances_format"], job["predictions_format"], job["instance_type"]) == ("jsonl", "jsonl", "object")
    assert job["gcs_source_uris"] == ["{{$.inputs.parameters['pipelinechannel--source']}}"]
    assert job["gcs_destination_output_uri_prefix"] == "{{$.pipeline_root}}/batch-predictions"
    assert (job["project"], job["location"]) == ("my-project", "europe-west4")
    assert job["service_account"] == "pipelines@my-project.iam.gserviceaccount.com"
    assert wired["parameters"]["key_field"] == {"componentInputParameter": "key_column"}
    assert wired["parameters"]["manual_batch_tuning_parameters_batch_size"] == {"componentInputParameter": "batch_size"}
    assert wired["artifacts"]["model"]["taskOutputArtifact"] == {"outputArtifactKey": "model",
                                                                 "producerTask": "vertex-model"}
    lookup = constant("vertex-model")
    assert (lookup["model_display_name"], lookup["project"]) == ("modelpress-digits", "my-project")
    assert tasks["vertex-model"]["inputs"]["parameters"]["version"] == {"componentInputParameter": "version"}


@pytest.mark.parametrize("override, message", [
    ({"source": "digits"}, "reads a gs:// JSON Lines file"),
    ({"onnx_model": "gs://b/m"}, "scores the registered model"),
    ({"output_format": "csv"}, "writes JSON Lines; use output_format: jsonl"),
])
def test_what_batch_prediction_cannot_mean_on_vertex_is_refused_before_submitting(override, message):
    from pipelines import settings
    from tests.pipelines.test_vertex import ROOT

    cfg = settings.load("vertex", ROOT / "configs" / "vertex.yaml", image_tag="abc1234")
    assert cfg.pipeline_parameters("batch_prediction")["source"].startswith("gs://")
    with pytest.raises(ModelpressError, match=message):
        cfg.pipeline_parameters("batch_prediction", override)


def test_batch_prediction_with_the_triton_container_is_refused(tmp_path, capsys):
    import yaml

    from pipelines import settings
    from tests.pipelines.test_vertex import ROOT

    data = yaml.safe_load((ROOT / "configs" / "vertex.yaml").read_text())
    data["serving"].update(container="triton", triton_image="r/tritonserver:25.01-py3")
    path = tmp_path / "vertex.yaml"
    path.write_text(yaml.safe_dump(data))
    from pipelines import submit

    settings.load("vertex", path, image_tag="abc1234")  # the config itself, and its other pipelines, are fine
    assert submit.main(["batch_prediction", "--dry-run", "--config", str(path), "--image-tag", "abc1234",
                        "--output-dir", str(tmp_path / "b")]) == 2
    assert "served by the modelpress image" in capsys.readouterr().err
