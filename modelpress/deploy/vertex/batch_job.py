"""Batch prediction on Vertex AI: the `batch_prediction:` block of configs/vertex.yaml and the
Model Registry lookup of the version to score with.

The job itself is Google Cloud Pipeline Components' ModelBatchPredictOp (a BatchPredictionJob
over the registered model: Vertex starts the serve image on its own machines and posts
`{"instances": [...]}` to its predict route, which `modelpress serve` answers in Vertex mode).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelpress.core.errors import ModelpressError
from modelpress.deploy.vertex.checks import check_accelerator, check_display_name
from modelpress.deploy.vertex.client import client, location_parent, one_by_display_name
from modelpress.deploy.vertex.registry import CHAMPION_ALIAS

# JSON Lines of objects keyed by the model's input name ("input", or "text" for a text model) and
# the key column: Vertex sends them as instance objects, which the serve image reads by input name.
INSTANCES_FORMATS = ("jsonl",)
PREDICTIONS_FORMATS = ("jsonl",)


@dataclass(frozen=True)
class BatchPrediction:
    """Machines and formats of the batch-prediction job (the `batch_prediction:` block)."""

    machine_type: str = "n1-standard-4"
    starting_replica_count: int = 1
    max_replica_count: int = 2  # Vertex scales between the two with the input's size
    instances_format: str = "jsonl"
    predictions_format: str = "jsonl"
    accelerator_type: str = ""
    accelerator_count: int = 0

    def validate(self, where: str = "batch_prediction") -> "BatchPrediction":
        if not 1 <= self.starting_replica_count <= self.max_replica_count:
            raise ModelpressError(f"{where}: replicas must satisfy 1 <= starting_replica_count <= "
                                  f"max_replica_count, got {self.starting_replica_count} and {self.max_replica_count}")
        if self.instances_format not in INSTANCES_FORMATS:
            raise ModelpressError(f"{where}.instances_format must be one of {list(INSTANCES_FORMATS)} (what the serve "
                                  f"image reads), got {self.instances_format!r}")
        if self.predictions_format not in PREDICTIONS_FORMATS:
            raise ModelpressError(f"{where}.predictions_format must be one of {list(PREDICTIONS_FORMATS)}, got "
                                  f"{self.predictions_format!r}")
        check_accelerator(self.accelerator_type, self.accelerator_count, where)
        return self


def model_version(project: str, location: str, display_name: str, version: str = CHAMPION_ALIAS, *,
                  credentials=None) -> str:
    """`projects/.../models/ID@<version>`: the registered model named `display_name`, at a version
    id or alias (default: the champion the deploy step aliased)."""
    from google.cloud.aiplatform_v1 import ModelServiceClient, types

    check_display_name(display_name, "serving.model_display_name")
    models = client(ModelServiceClient, location, credentials)
    found = one_by_display_name(list(models.list_models(request=types.ListModelsRequest(
        parent=location_parent(project, location), filter=f'display_name="{display_name}"'))), "model", display_name)
    if found is None:
        raise ModelpressError(f"no model named {display_name!r} in the Model Registry of {project}/{location}: "
                              "deploy one first (the optimise or retraining pipeline on Vertex AI)")
    return f"{found.name}@{version}"


def model_uri(location: str, resource: str) -> str:
    """The URI GCPC's VertexModel artifacts carry for a model resource."""
    return f"https://{location}-aiplatform.googleapis.com/v1/{resource}"


def check_serving(serving) -> None:
    """The job scores the model `serving` (the config's `serving:` block, or None) registers, which the
    modelpress image must serve: Vertex posts {"instances": [...]} to its predict route."""
    if serving is None or serving.container != "modelpress":
        raise ModelpressError("batch prediction on Vertex AI scores the model the `serving:` block registers, "
                              "served by the modelpress image, which answers {\"instances\": [...]} (Triton's "
                              "does not): add that block with container: modelpress")


def check_parameters(values: dict) -> None:
    """What the batch_prediction pipeline's parameters can mean on Vertex AI, refused before submitting:
    the job reads JSON Lines from Cloud Storage and scores a registered model."""
    source = str(values.get("source", ""))
    if not source.startswith("gs://"):
        raise ModelpressError(f"source={source!r}: on Vertex AI batch prediction reads a gs:// JSON Lines file of "
                              "instances (objects keyed by the model's input name, e.g. {\"input\": [...]}); "
                              "upload it with `gcloud storage cp`")
    if values.get("onnx_model"):
        raise ModelpressError("onnx_model: on Vertex AI the job scores the registered model "
                              "(serving.model_display_name, version 0 = champion); leave onnx_model empty")
    if values.get("output_format", "jsonl") != "jsonl":
        raise ModelpressError(f"output_format={values['output_format']!r}: Vertex AI batch prediction writes JSON "
                              "Lines; use output_format: jsonl (csv and parquet are for local runs)")
