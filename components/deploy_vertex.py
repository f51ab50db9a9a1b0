from kfp import dsl
from kfp.dsl import Input, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def deploy_vertex(
    model: Input[Model],
    served: Output[Model],
    project: str,
    location: str,
    model_display_name: str,
    endpoint_display_name: str,
    serve_image: str = "",
    container: str = "modelpress",
    triton_image: str = "",
    repository: str = "",
    model_name: str = "digits",
    machine_type: str = "n1-standard-2",
    min_replica_count: int = 1,
    max_replica_count: int = 1,
    canary_traffic_percent: int = 100,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    labels: dict = {},
) -> str:
    """Upload the model to the Vertex AI Model Registry as the champion and deploy it to the endpoint.

    Args:
        model: The chosen ONNX model (model.onnx + meta.json); its metadata names the variant.
        project: The Google Cloud project.
        location: The Vertex AI region, e.g. europe-west4.
        serve_image: The modelpress serve image (container modelpress), pinned by an immutable tag or
            @sha256 digest.
        container: What serves it: modelpress (the serve image, KServe v2 + Vertex instances) or triton
            (NVIDIA's tritonserver image over the same repository, KServe v2 bodies only).
        triton_image: The tritonserver image mirrored into Artifact Registry (container triton).
        model_display_name: The Model Registry name; a model of that name gets a new version (aliased
            champion), else a new model is made.
        endpoint_display_name: The endpoint's name; it is created when none has it.
        repository: A model repository that records the version once the deploy succeeded, where later
            runs read the champion ("": none).
        model_name: The model's name in `repository`.
        machine_type: The serving machine type.
        min_replica_count: The fewest serving replicas.
        max_replica_count: The most serving replicas.
        canary_traffic_percent: The new version's share of the endpoint's traffic (100: no canary); the
            model deployed before keeps the rest, older ones are undeployed.
        accelerator_type: The serving GPU, e.g. NVIDIA_TESLA_T4 ("": CPU serving).
        accelerator_count: GPUs per replica.
        labels: Labels on the uploaded model and a new endpoint.

    Returns:
        served: The one-model Triton-layout repository Vertex serves (its gs:// URI is the upload's
            artifact_uri); its metadata holds the model version, the endpoint and the traffic split.
        Output: The deployed model version, projects/.../models/ID@VERSION.
    """
    from components._io import from_arguments
    from modelpress.deploy import vertex

    serving = from_arguments(vertex.Serving, locals()).validate()
    result = vertex.publish(model.path, served.path, served.uri, serving, project=project, location=location,
                            model_name=model_name, repository=repository, labels=labels,
                            variant=model.metadata.get("variant"))
    served.metadata.update({"resourceName": result["model_version"], **result})
    return result["model_version"]
