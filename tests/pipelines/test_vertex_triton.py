"""serving.container: triton — NVIDIA's own tritonserver image serves the deployed repository on Vertex.

The Model and Endpoint services are the in-memory ones of test_vertex.py; the component, the
library and the request protos are real, and each field of the upload is asserted.
"""

import pytest
import yaml
from google.cloud.aiplatform_v1 import types
from tritonclient.grpc import model_config_pb2 as mc

from modelpress.core.errors import ModelpressError
from modelpress.deploy import repository
from modelpress.deploy import vertex
from pipelines import settings
from pipelines.compile import compile_pipeline
from tests.pipelines.test_vertex import ROOT, _deploy, _vertex_config, fake_vertex, gcs  # noqa: F401 (fixtures)

TRITON = "europe-west4-docker.pkg.dev/my-project/modelpress/tritonserver:25.01-py3"


def test_triton_upload_runs_tritonserver_over_the_same_repository(fake_vertex, gcs, mlp_onnx_dir):
    version, served = _deploy(mlp_onnx_dir, gcs, "run1", container="triton", triton_image=TRITON)
    (upload,) = fake_vertex.requests("upload_model")
    spec = upload.model.container_spec
    assert spec.image_uri == TRITON
    # Vertex expands $(AIP_STORAGE_URI) to where it copied artifact_uri; a v2 body on the
    # predict route is an infer on the default model.
    assert list(spec.args) == ["--model-repository=$(AIP_STORAGE_URI)", "--vertex-ai-default-model=digits"]
    assert list(spec.command) == []  # the image's entrypoint starts tritonserver when AIP_MODE is set
    assert [p.container_port for p in spec.ports] == [8080]
    # no routes of our own: Triton serves Vertex's defaults (AIP_PREDICT_ROUTE, AIP_HEALTH_ROUTE)
    assert (spec.predict_route, spec.health_route) == ("", "")
    assert upload.model.artifact_uri == served.uri == "gs://bucket/run1/deploy-vertex/served"
    assert list(upload.model.version_aliases) == ["champion", "default"]
    assert dict(upload.model.labels)["team"] == "ml" and dict(upload.model.labels)["variant"] == "static-int8"
    card_md = "gs://bucket/run1/deploy-vertex/served/digits/1/model_card.md"
    assert upload.model.version_description.endswith(f"Full card: {card_md}")  # Triton ignores the card file
    # the Triton layout, unchanged: <model>/config.pbtxt naming the ONNX Runtime platform, <version>/model.onnx
    config = repository.read_config(served.path, "digits")
    assert (config.name, config.platform, config.backend) == ("digits", "onnxruntime_onnx", "onnxruntime")
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    assert (gcs / "bucket/run1/deploy-vertex/served/digits/1/model.onnx").is_file()
    (deploy,) = fake_vertex.requests("deploy_model")
    assert deploy.deployed_model.model == version
    assert deploy.deployed_model.dedicated_resources.machine_spec.machine_type == "n1-standard-4"
    # the champion is recorded as with the modelpress container
    assert repository.versions(gcs / "bucket/modelpress/model_repository", "digits") == [1]


def test_configured_labels_win_over_the_model_cards(fake_vertex, gcs, mlp_onnx_dir):
    _deploy(mlp_onnx_dir, gcs, "run1", labels={"team": "ml", "variant": "my-own"})
    labels = dict(fake_vertex.requests("upload_model")[0].model.labels)
    assert (labels["variant"], labels["team"], labels["task"]) == ("my-own", "ml", "classification")


def test_triton_with_a_gpu_places_its_instances_on_the_gpu(fake_vertex, gcs, mlp_onnx_dir):
    _, served = _deploy(mlp_onnx_dir, gcs, "run1", container="triton", triton_image=TRITON,
                        accelerator_type="NVIDIA_L4", accelerator_count=1)
    assert [g.kind for g in repository.read_config(served.path, "digits").instance_group] == \
        [mc.ModelInstanceGroup.KIND_GPU]
    machine = fake_vertex.requests("deploy_model")[0].deployed_model.dedicated_resources.machine_spec
    assert (machine.accelerator_type, machine.accelerator_count) == (types.AcceleratorType.NVIDIA_L4, 1)


def test_the_modelpress_container_is_the_default(fake_vertex, gcs, mlp_onnx_dir):
    _deploy(mlp_onnx_dir, gcs, "run1", triton_image=TRITON)  # a triton_image alone changes nothing
    spec = fake_vertex.requests("upload_model")[0].model.container_spec
    assert spec.image_uri.endswith("/serve:abc1234") and list(spec.args) == []
    assert (spec.predict_route, spec.health_route) == ("/predict", "/health")


@pytest.mark.parametrize("change, message", [
    ({"container": "tensorrt"}, "container must be one of modelpress, triton, got 'tensorrt'"),
    ({"container": "triton"}, "container triton needs triton_image: nvcr.io/nvidia/tritonserver"),
    ({"container": "triton", "triton_image": "r/tritonserver:latest"}, "triton_image.*tagged 'latest'"),
    ({"container": "triton", "triton_image": "r/tritonserver"}, "triton_image.*has no tag"),
])
def test_triton_settings_are_checked(change, message):
    base = dict(serve_image="r/serve:abc1234", model_display_name="m", endpoint_display_name="e")
    with pytest.raises(ModelpressError, match=message):
        vertex.Serving(**{**base, **change}).validate()


def test_container_triton_needs_no_serve_image():
    serving = vertex.Serving(container="triton", triton_image=TRITON, model_display_name="m",
                             endpoint_display_name="e").validate()
    assert serving.image == TRITON


def test_vertex_config_with_triton_compiles_the_deploy_step_with_it(tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "vertex.yaml").read_text())
    data["serving"].update(container="triton", triton_image=TRITON)
    del data["serving"]["serve_image"]
    path = tmp_path / "vertex.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = settings.load("vertex", path, image_tag="abc1234")
    spec = yaml.safe_load(compile_pipeline("optimise", cfg.target, tmp_path).read_text())
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    (task,) = [t for dag in dags for name, t in dag["tasks"].items() if name.startswith("deploy-vertex")]
    params = task["inputs"]["parameters"]
    assert params["container"]["runtimeValue"]["constant"] == "triton"
    assert params["triton_image"]["runtimeValue"]["constant"] == TRITON


def test_a_bad_container_in_the_vertex_config_is_refused(tmp_path):
    with pytest.raises(ModelpressError, match="serving.container must be one of modelpress, triton"):
        settings.load("vertex", _vertex_config(tmp_path, **{"serving.container": "kserve"}), image_tag="abc1234")
