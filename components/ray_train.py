from kfp import dsl
from kfp.dsl import ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def ray_train(
    dataset: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    project: str,
    location: str,
    service_account: str,
    ray: dict,
    labels: dict = {},
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
    mixed_precision: str = "auto",
):
    """Train like `distributed-train`, on a Ray on Vertex AI cluster: the same workers in Ray Train.

    Args:
        dataset: The dataset artifact on Cloud Storage; each Ray node copies it before training.
        project: The Google Cloud project of the cluster.
        location: The cluster's region.
        service_account: The service account the cluster's nodes run as (when it is created).
        ray: The `ray:` block of configs/vertex.yaml: the cluster (created when missing and allowed), its
            image, machine types, worker autoscaling, and the Ray Train workers (num_workers, cpus_per_worker,
            use_gpu).
        labels: Labels on a cluster created here.
        architecture: The registry architecture: mlp, cnn or mobilenet_v2 (or your callable in user_code/).
        model_args: The architecture's arguments, e.g. {"channels": [8, 16]} (cnn).
        epochs: The most epochs to train.
        batch_size: The global batch: examples per optimiser step over all Ray workers.
        learning_rate: The peak learning rate of the one-cycle schedule.
        optimizer: adamw, adam or sgd (Nesterov momentum 0.9).
        weight_decay: The optimiser's weight decay.
        seed: Seed of the initial weights and the batch order.
        patience: Epochs without validation-loss improvement before stopping early; 0 never stops early.
        device: auto (GPUs when ray.use_gpu), cpu or cuda.
        parallelism: ddp, fsdp or pipeline: the worker each Ray worker runs.
        mixed_precision: FSDP only: auto, none or bf16.

    Returns:
        model: The trained torch model, written by the Ray job's rank 0; metadata as `train`'s.
        metrics: Test accuracy and loss, losses, epochs run, samples/s, as `distributed-train`.
        classification: The confusion matrix on the test split.
    """
    from dataclasses import asdict

    from components._io import record, train_settings
    from modelpress.deploy.vertex import ray_cluster

    cluster = ray_cluster.RayCluster(**ray).validate()
    result = ray_cluster.train_on_cluster(
        cluster, project=project, location=location, service_account=service_account, labels=labels,
        dataset_uri=dataset.uri, model_uri=model.uri, architecture=architecture, model_args=model_args,
        settings=asdict(train_settings(locals())),
        layout={"parallelism": parallelism, "mixed_precision": mixed_precision})
    record(result, artifact=model, metrics=metrics, classification=classification)
