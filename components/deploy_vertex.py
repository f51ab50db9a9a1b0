from kfp import dsl
from kfp.dsl import Input, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def deploy_vertex(
    model: Input[Model],
    served: Output[Model],
    project: str,
    location: str,
    serve_image: str,
    model_display_name: str,
    endpoint_display_name: str,
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
    """Upload the model to the Vertex Model Registry (champion) and deploy it to the endpoint.

    `served` holds the one-model Triton-layout repository that Vertex serves (its gs:// URI is
    the upload's artifact_uri). `repository`, when given, gets the same version recorded after
    the deploy succeeded: later runs read the champion there. Returns the model version.
    """
    from modelpress.deploy import repository as repo
    from modelpress.deploy import vertex

    serving = vertex.Serving(serve_image=serve_image, model_display_name=model_display_name,
                             endpoint_display_name=endpoint_display_name, machine_type=machine_type,
                             min_replica_count=min_replica_count, max_replica_count=max_replica_count,
                             canary_traffic_percent=canary_traffic_percent, accelerator_type=accelerator_type,
                             accelerator_count=accelerator_count).validate()
    meta = {"variant": model.metadata.get("variant")}
    repo.deploy(model.path, served.path, model_name, extra_meta=meta)
    result = vertex.deploy(served.uri, serving, project=project, location=location, labels=labels,
                           description=f"modelpress {model_name}: {model.metadata.get('variant') or 'model'}")
    if repository:
        version = repo.deploy(model.path, repository, model_name, extra_meta={**meta, **result})
        print(f"[deploy-vertex] champion recorded as {repository}/{model_name}/{version}")
    served.metadata.update({"resourceName": result["model_version"], **result})
    return result["model_version"]
