from kfp import dsl
from kfp.dsl import Input, Model

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def deploy_local(
    model: Input[Model],
    repository: str,
    model_name: str = "digits",
    max_batch_size: int = 64,
    max_queue_delay_us: int = 0,
) -> int:
    """Write the model as the next numbered version of a Triton-layout model repository.

    Args:
        model: The chosen ONNX model (model.onnx + meta.json); its metadata names the variant.
        repository: The model repository folder (local, or gs:// through Cloud Storage FUSE).
        model_name: The model's name in the repository: repository/<model_name>/<version>/model.onnx.
        max_batch_size: The largest batch the server's dynamic batcher forms (config.pbtxt).
        max_queue_delay_us: How long the batcher waits for a batch to fill, in microseconds.

    Returns:
        Output: The version number written.
    """
    from modelpress.deploy import repository as repo

    version = repo.deploy(model.path, repository, model_name, max_batch_size=max_batch_size,
                          max_queue_delay_us=max_queue_delay_us,
                          extra_meta={"variant": model.metadata.get("variant")})
    print(f"[deploy] {model_name} version {version} written to {repository}/{model_name}/{version}")
    return version
