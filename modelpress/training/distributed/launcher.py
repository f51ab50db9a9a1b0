"""The launch: `train` checks the settings and the layout (`plan`) before any process starts,
then runs this node's elastic agent (`torch.distributed.launcher.api.elastic_launch`, the
machinery behind ``torchrun``), which spawns ``nproc_per_node`` processes running `worker`.
Global rank 0 saves the model and its result comes back here; every other node's `train`
returns None and writes nothing. A failed worker's own error becomes the raised message."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch

from modelpress import training
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.data.dataset import load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.training.distributed import ddp, fsdp, pipeline
from modelpress.training.distributed.layout import Layout, Nodes, cpu_cores, resolve_nodes
from modelpress.training.distributed.ranks import LABEL, Rank

RUN_ID = "modelpress-distributed-train"


@dataclass
class Job:
    """Everything a worker needs; pickled by the launcher into every process."""

    dataset_dir: str
    out_dir: str
    architecture: str
    model_args: dict
    settings: training.TrainSettings
    layout: Layout
    nodes: Nodes
    nproc_per_node: int
    device_type: str  # "cpu" | "cuda"
    backend: str  # "gloo" | "nccl"
    threads: int  # torch threads per process
    verbose: bool = True

    @property
    def world_size(self) -> int:
        return self.nodes.nnodes * self.nproc_per_node


def plan(dataset_dir: str, out_dir: str, *, architecture: str = "mlp", model_args: dict | None = None,
         settings: training.TrainSettings | None = None, layout: Layout | None = None,
         environ: Mapping[str, str] | None = None, verbose: bool = True) -> Job:
    """Check everything that can be checked before any process starts; build the job."""
    settings = (settings or training.TrainSettings()).validate()
    if settings.epochs < 1:
        raise ModelpressError("distributed training needs epochs >= 1 (epochs 0, taking a trained model as it "
                              "is, belongs to the optimise pipeline's train step)")
    if is_text_dataset(dataset_dir):
        raise ModelpressError("distributed training of text models is not supported yet: train them with the train "
                              "step (the optimise pipeline, or the training pipeline on the local target)")
    if (local_path(dataset_dir) / "schema.json").exists() and load_dataset(dataset_dir).task != "classification":
        raise ModelpressError("distributed training trains classifiers for now; train a regression model with "
                              "the train step (the training pipeline locally, or the optimise pipeline)")
    layout = (layout or Layout()).validate()
    ray = layout.engine == "ray"
    remote = ray and bool(layout.ray_address)  # the workers' machines are not this one
    # Ray places its workers itself: this process is the one driver (node 0); CLUSTER_SPEC is torchrun's
    nodes = (Nodes(layout.nnodes, 0, layout.master_addr, layout.master_port) if ray
             else resolve_nodes(layout, os.environ if environ is None else environ))
    device_type = _remote_device_type(settings.device, layout) if remote else training.resolve_device(settings.device).type
    backend = layout.backend if layout.backend != "auto" else ("nccl" if device_type == "cuda" else "gloo")
    if backend == "nccl" and device_type != "cuda":
        raise ModelpressError("backend 'nccl' needs CUDA GPUs, and training runs on the CPU here; "
                              "use backend 'auto' or 'gloo'")
    if layout.parallelism == "fsdp" and layout.mixed_precision == "bf16" and device_type != "cuda":
        raise ModelpressError("mixed_precision bf16 needs CUDA GPUs with bf16, and training runs on the CPU here; "
                              "use mixed_precision auto or none")
    gpus = torch.cuda.device_count() if device_type == "cuda" else 0
    nproc = layout.nproc_per_node or (gpus if device_type == "cuda" else cpu_cores())
    if device_type == "cuda" and nproc > gpus and not remote:
        raise ModelpressError(f"nproc_per_node {nproc} asks for more processes than this node's {gpus} "
                              "GPU(s); use 0 (one per GPU) or at most the GPU count")
    world = nodes.nnodes * nproc
    batch = settings.batch_size
    if layout.parallelism in ("ddp", "fsdp") and batch % world:
        raise ModelpressError(
            f"batch_size {batch} is the global batch and must split evenly over the {world} "
            f"process(es) ({nodes.nnodes} node(s) x {nproc}); use a multiple of {world}, e.g. "
            f"{max(world, batch // world * world)}, or change nproc_per_node")
    if layout.parallelism == "pipeline" and batch % layout.microbatches:
        raise ModelpressError(f"batch_size {batch} must split evenly into {layout.microbatches} "
                              f"micro-batches; use a multiple of {layout.microbatches}")
    return Job(dataset_dir=str(dataset_dir), out_dir=str(out_dir), architecture=architecture,
               model_args=dict(model_args or {}), settings=settings, layout=layout, nodes=nodes,
               nproc_per_node=nproc, device_type=device_type, backend=backend,
               threads=layout.threads_per_process or (
                   max(1, int((layout.resources_per_worker or {}).get("CPU", 1))) if remote
                   else max(1, cpu_cores() // nproc)), verbose=verbose)


def _remote_device_type(device: str, layout: Layout) -> str:
    """The device type on a Ray cluster's workers: named, or (auto) CUDA when the workers ask for GPUs."""
    if device == "auto":
        return "cuda" if (layout.resources_per_worker or {}).get("GPU") else "cpu"
    return "cuda" if str(device).startswith("cuda") else "cpu"


def train(dataset_dir: str, out_dir: str, *, architecture: str = "mlp", model_args: dict | None = None,
          settings: training.TrainSettings | None = None, layout: Layout | None = None,
          environ: Mapping[str, str] | None = None, log: Callable[[str], None] = print,
          verbose: bool = True) -> dict | None:
    """Launch this node's share of distributed training; the result on the node of rank 0, else None.

    With ``layout.engine`` "ray" Ray Train runs the same workers (`ray_engine.train_with_ray`) and
    this one call drives them all: it returns rank 0's result.

    `verbose` False silences the workers' per-epoch lines (rank 0 prints them otherwise).
    """
    import tempfile

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    t0 = time.perf_counter()
    job = plan(dataset_dir, out_dir, architecture=architecture, model_args=model_args, settings=settings,
               layout=layout, environ=environ, verbose=verbose)
    if job.layout.engine == "ray":
        from modelpress.training.distributed.ray_engine import train_with_ray

        return train_with_ray(job, ray_address=job.layout.ray_address,
                              resources_per_worker=job.layout.resources_per_worker or None, log=log)
    n = job.nodes
    log(f"[{LABEL}] {job.layout.parallelism}: node {n.node_rank} of {n.nnodes}, {job.nproc_per_node} "
        f"process(es) here, world size {job.world_size}, {job.backend} on {job.device_type}, "
        f"{job.threads} thread(s) each, master {n.master_addr}:{n.master_port}")
    # the launcher's per-worker error files go here, and go when the run ends (failures read them first)
    with tempfile.TemporaryDirectory(prefix="modelpress-launch-") as launch_dir:
        config = LaunchConfig(
            min_nodes=n.nnodes, max_nodes=n.nnodes, nproc_per_node=job.nproc_per_node, run_id=RUN_ID,
            # static rendezvous: node ranks are known (torchrun --node-rank), node 0 hosts the store
            rdzv_backend="static", rdzv_endpoint=f"{n.master_addr}:{n.master_port}",
            rdzv_configs={"rank": n.node_rank, "timeout": job.layout.rendezvous_timeout},
            max_restarts=0,  # a failed step fails the same way again: report it instead
            monitor_interval=0.1, start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=launch_dir))
        try:
            outputs = elastic_launch(config, worker)(job)
        except ChildFailedError as exc:
            raise ModelpressError(failure_message(exc)) from None
    result = outputs.get(0)  # keyed by global rank: only node 0 holds rank 0
    if result is not None:
        result["metrics"]["work_seconds"] = time.perf_counter() - t0
    return result


def failure_message(exc) -> str:
    """The worker's own ModelpressError message, else which rank failed and how.

    `exc` is the launcher's ChildFailedError; a failure's message is a dict when the worker
    recorded its exception, a string the launcher made up otherwise (a signal, an early exit).
    """
    recorded = {rank: f.message["message"] for rank, f in exc.failures.items() if isinstance(f.message, dict)}
    for rank in sorted(recorded):
        if recorded[rank].startswith("ModelpressError: "):
            return recorded[rank][len("ModelpressError: "):]
    rank, first = exc.get_first_failure()
    if rank in recorded:
        return (f"distributed training failed in worker rank {rank} (exit code {first.exitcode}): "
                f"{recorded[rank]}. Its traceback is in the log above.")
    return (f"distributed training worker rank {rank} died (exit code {first.exitcode}, {first.message}) "
            "without recording an error: killed by the system (out of memory?), or it never started. "
            "Workers are spawned and re-import the calling script, so a script that calls "
            "modelpress.training.distributed.train needs an `if __name__ == \"__main__\":` guard.")


def worker(job: Job) -> dict | None:
    """One training process (started by the launcher): global rank 0 returns the result."""
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    torch.set_num_threads(job.threads)
    device = torch.device("cuda", local_rank) if job.device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(job.backend)
    me = Rank(rank, local_rank, dist.get_world_size(), device,
              log=functools.partial(print, flush=True) if rank == 0 and job.verbose else (lambda _msg: None))
    # the settings chose the device type; each rank takes its own device (cuda:<local rank>)
    job = replace(job, settings=replace(job.settings, device=str(device)))
    try:
        run = {"ddp": ddp.run, "fsdp": fsdp.run, "pipeline": pipeline.run}[job.layout.parallelism]
        return run(job, me)
    finally:
        dist.destroy_process_group()
