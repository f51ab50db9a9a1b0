from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def distributed_train(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    architecture: str = "cnn",
    model_args: dict = {},
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    optimizer: str = "adamw",
    weight_decay: float = 1e-4,
    seed: int = 0,
    patience: int = 5,
    device: str = "auto",
    parallelism: str = "ddp",
    nproc_per_node: int = 0,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int = 29500,
    backend: str = "auto",
    microbatches: int = 4,
    schedule: str = "gpipe",
):
    """Train like `train`, across processes and machines: DDP or pipeline parallelism.

    parallelism: "ddp" (data parallel) or "pipeline" (model split into stages).
    nproc_per_node: 0 = one per GPU, else one per CPU core. batch_size is the global batch.
    CLUSTER_SPEC (set by Vertex on every replica) overrides nnodes/node_rank/master_addr.
    backend: "auto" = nccl with CUDA, else gloo. microbatches/schedule ("gpipe" | "1f1b"):
    pipeline parallelism only. Only the global rank 0 writes the model and metrics.
    """
    from modelpress.training import distributed
    from components._io import record
    from modelpress import training

    settings = training.TrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                      optimizer=optimizer, weight_decay=weight_decay, seed=seed,
                                      patience=patience, device=device)
    layout = distributed.Layout(parallelism=parallelism, nproc_per_node=nproc_per_node, nnodes=nnodes,
                                node_rank=node_rank, master_addr=master_addr, master_port=master_port,
                                backend=backend, microbatches=microbatches, schedule=schedule)
    result = distributed.train(dataset.path, model.path, architecture=architecture,
                               model_args=model_args, settings=settings, layout=layout)
    if result is None:
        # Not the node with global rank 0. Every Vertex replica runs this step with the same
        # output paths: leave before KFP's executor writes an empty executor_output.json over
        # rank 0's (SystemExit skips that write; exit status 0 keeps the job successful).
        raise SystemExit(0)
    record(result, artifact=model, metrics=metrics, classification=classification)
