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
    mixed_precision: str = "auto",
    engine: str = "torchrun",
    ray_address: str = "",
    resources_per_worker: dict = {},
):
    """Train like `train`, across processes and machines: data parallel (DDP), sharded (FSDP2) or pipeline.

    Only the process with global rank 0 writes the model and the metrics. On Vertex AI every replica
    runs this step; CLUSTER_SPEC (set by Vertex) overrides nnodes, node_rank and master_addr.

    Args:
        dataset: The dataset artifact; trained on its train split, scored on its test split.
        architecture: The registry architecture: mlp, cnn or mobilenet_v2.
        model_args: The architecture's arguments, e.g. {"channels": [8, 16]} (cnn).
        epochs: The most epochs to train.
        batch_size: The global batch: examples per optimiser step over all processes.
        learning_rate: The peak learning rate of the one-cycle schedule.
        optimizer: adamw, adam or sgd (Nesterov momentum 0.9).
        weight_decay: The optimiser's weight decay.
        seed: Seed of the initial weights and the batch order.
        patience: Epochs without validation-loss improvement before stopping early; 0 never stops early.
        device: auto (CUDA GPUs when torch sees them, else the CPU), cpu or cuda[:N].
        parallelism: ddp (every process holds the model, each trains on its share of the batch), fsdp
            (the same, with parameters, gradients and optimiser state sharded over the processes: for
            models too big for one device) or pipeline (the model cut into stages, one per process).
        nproc_per_node: Processes on each machine; 0: one per GPU, else one per CPU core.
        nnodes: The number of machines.
        node_rank: This machine's index, 0 to nnodes - 1 (0 is the master).
        master_addr: The master machine's host name or IP address.
        master_port: The master's rendezvous port.
        backend: The collective backend: auto (nccl with CUDA, else gloo), gloo or nccl.
        microbatches: Pipeline only: microbatches each batch is split into.
        schedule: Pipeline only: gpipe or 1f1b.
        mixed_precision: FSDP only: auto (bf16 compute, fp32 reductions on GPUs with bf16; fp32 on the CPU),
            none or bf16.
        engine: torchrun (torch's elastic launcher on every node) or ray (Ray Train runs the same workers,
            nnodes x nproc_per_node of them, placed by Ray; node_rank, master_addr/port and CLUSTER_SPEC
            are not used). Needs modelpress[ray] in the image.
        ray_address: Ray only: the running cluster to train on (ray://head:10001 or head:6379); empty: a
            Ray started on this machine for the step. On a cluster the model path must be shared storage.
        resources_per_worker: Ray only: each worker's Ray resources, e.g. {"CPU": 4, "GPU": 1}; empty:
            1 CPU (and 1 GPU when training on CUDA).

    Returns:
        model: The trained torch model; its metadata is the model card with the parallelism and world
            size (and the pipeline schedule).
        metrics: Test accuracy and loss, losses, epochs run, samples/s and training compute, as `train`.
        classification: The confusion matrix on the test split.
    """
    from components._io import from_arguments, record, train_settings
    from modelpress.training import distributed

    settings = train_settings(locals())
    layout = from_arguments(distributed.Layout, locals())
    result = distributed.train(dataset.path, model.path, architecture=architecture,
                               model_args=model_args, settings=settings, layout=layout)
    if result is None:
        # Not the node with global rank 0. Every Vertex replica runs this step with the same
        # output paths: leave before KFP's executor writes an empty executor_output.json over
        # rank 0's (SystemExit skips that write; exit status 0 keeps the job successful).
        raise SystemExit(0)
    record(result, artifact=model, metrics=metrics, classification=classification)
