from kfp import dsl
from kfp.dsl import Output
from google_cloud_pipeline_components.types.artifact_types import VertexModel

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def vertex_model(
    model: Output[VertexModel],
    project: str,
    location: str,
    model_display_name: str,
    version: int = 0,
) -> str:
    """The registered model to score with, as the VertexModel artifact GCPC's jobs take.

    Args:
        project: The Google Cloud project.
        location: The Vertex AI region, e.g. europe-west4.
        model_display_name: The Model Registry name the deploy step uploads to (serving.model_display_name).
        version: A version id of it (0: the version the deploy step aliased champion).

    Returns:
        model: The model version (metadata resourceName projects/.../models/ID@version).
        Output: The same resource name.
    """
    from modelpress.deploy.vertex import batch_job

    resource = batch_job.model_version(project, location, model_display_name,
                                       str(version) if version else batch_job.CHAMPION_ALIAS)
    model.uri = batch_job.model_uri(location, resource)
    model.metadata["resourceName"] = resource
    print(f"[vertex-model] scoring with {resource}")
    return resource
