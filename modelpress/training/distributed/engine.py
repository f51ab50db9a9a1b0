"""Distributed training: data parallelism (DDP) and pipeline parallelism, launched like torchrun.

`train` runs in the parent process of each node (the component, a test, the benchmark). It
checks the settings, works out the node layout (from ``CLUSTER_SPEC`` on Vertex AI, else
from the parameters) and starts this node's elastic agent with
`torch.distributed.launcher.api.elastic_launch`, the machinery behind ``torchrun``. The
agent spawns ``nproc_per_node`` processes running `worker`; global rank 0 saves the model
with `models.save_model` and returns the same result `training.train` returns, plus the
distributed metrics. Every other node's `train` returns None and writes nothing.

Strategies:
- ``ddp``: every process holds the whole model and trains on its share of each global
  batch; DistributedDataParallel averages the gradients (gloo on CPU, NCCL on GPU).
  Batch norm uses each process's share on CPU, the global batch (SyncBatchNorm) on GPU.
- ``pipeline``: the model is cut into one stage per process (`torch.distributed.pipelining`),
  each global batch is split into micro-batches and run by a GPipe or 1F1B schedule.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from modelpress.models import flops as flops_mod
from modelpress import models
from modelpress import training
from modelpress.core.errors import ModelpressError
from modelpress.evaluation import score_logits, torch_scoring

STRATEGIES = ("ddp", "pipeline")
SCHEDULES = ("gpipe", "1f1b")
BACKENDS = ("auto", "gloo", "nccl")
# Vertex AI pools that train: workerpool0 is the master (primary replica), workerpool1 the
# workers; workerpool2/3 (reduction server, evaluators) take no part in the process group.
TRAINING_POOLS = ("workerpool0", "workerpool1")
RUN_ID = "modelpress-distributed-train"
LABEL = "distributed-train"


# ---------------------------------------------------------------------------- layout

@dataclass
class Layout:
    """How to spread training over processes and machines (the component's parameters)."""

    parallelism: str = "ddp"  # "ddp" | "pipeline" (not "strategy": a Vertex CustomJob field)
    nproc_per_node: int = 0  # 0: one per GPU, else one per CPU core
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str = "auto"  # auto: nccl with CUDA, else gloo
    microbatches: int = 4  # pipeline only
    schedule: str = "gpipe"  # pipeline only
    threads_per_process: int = 0  # torch threads in each process; 0: this node's cores / processes
    rendezvous_timeout: int = 900  # seconds to wait for every node to join

    def validate(self) -> "Layout":
        problems = []
        if self.parallelism not in STRATEGIES:
            problems.append(f"parallelism must be one of {list(STRATEGIES)}, got {self.parallelism!r}")
        for name, low in (("nproc_per_node", 0), ("nnodes", 1), ("node_rank", 0), ("microbatches", 1),
                          ("threads_per_process", 0), ("rendezvous_timeout", 1)):
            value = getattr(self, name)
            if not _whole(value) or value < low:
                problems.append(f"{name} must be a whole number >= {low}, got {value!r}")
        if _whole(self.node_rank) and _whole(self.nnodes) and self.node_rank >= self.nnodes:
            problems.append(f"node_rank {self.node_rank} must be below nnodes {self.nnodes}")
        if not _whole(self.master_port) or not 1 <= self.master_port <= 65535:
            problems.append(f"master_port must be a port number 1-65535, got {self.master_port!r}")
        if not isinstance(self.master_addr, str) or not self.master_addr.strip():
            problems.append("master_addr must name the master node (a host name or IP address)")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if problems:
            raise ModelpressError("invalid distributed layout: " + "; ".join(problems))
        return self


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Nodes:
    """The machines taking part and this one's place among them."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int


def nodes_from_cluster_spec(text: str, default_port: int) -> Nodes:
    """Read Vertex AI's ``CLUSTER_SPEC``: workerpool0 is the master, pools 0 and 1 train.

    ``{"cluster": {"workerpool0": ["host-0:2222"], "workerpool1": ["host-1:2222", "host-2:2222"]},
    "task": {"type": "workerpool1", "index": 0}}`` gives 3 nodes, this one rank 1, master
    host-0 on port 2222 (`default_port` when the entry has none). Vertex's ``WORLD_SIZE``
    counts machines, not processes, so it is not used.
    """
    fix = "Vertex AI sets it on every replica; unset it to use nnodes, node_rank and master_addr"
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelpressError(f"CLUSTER_SPEC is not valid JSON ({exc}); {fix}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict) \
            or not isinstance(spec.get("task"), dict):
        raise ModelpressError(f"CLUSTER_SPEC must be an object with 'cluster' and 'task' objects; {fix}")
    cluster, task = spec["cluster"], spec["task"]
    pools = {}
    for pool in TRAINING_POOLS:
        entries = cluster.get(pool, [])
        if not isinstance(entries, list) or not all(isinstance(e, str) and e.strip() for e in entries):
            raise ModelpressError(f"CLUSTER_SPEC cluster.{pool} must be a list of 'host:port' strings, "
                                  f"got {entries!r}")
        pools[pool] = entries
    if not pools["workerpool0"]:
        raise ModelpressError("CLUSTER_SPEC has no cluster.workerpool0, the master node; "
                              f"every Vertex AI training job has one. {fix}")
    kind, index = task.get("type"), task.get("index")
    if kind not in TRAINING_POOLS:
        raise ModelpressError(f"CLUSTER_SPEC task.type is {kind!r}; only {list(TRAINING_POOLS)} train "
                              "(workerpool2/3 are reduction servers and evaluators): run this "
                              "component in worker pools 0 and 1 only")
    if not _whole(index) or not 0 <= index < len(pools[kind]):
        raise ModelpressError(f"CLUSTER_SPEC task.index {index!r} is not a replica of {kind}, which lists "
                              f"{len(pools[kind])}; the index counts from 0")
    offset = 0 if kind == "workerpool0" else len(pools["workerpool0"])
    host, port = _host_port(pools["workerpool0"][0], default_port)
    return Nodes(nnodes=len(pools["workerpool0"]) + len(pools["workerpool1"]), node_rank=offset + index,
                 master_addr=host, master_port=port)


def _host_port(entry: str, default_port: int) -> tuple[str, int]:
    entry = entry.strip()
    if entry.startswith("["):  # IPv6: [::1]:2222
        host, _, rest = entry[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = entry.rpartition(":")
        if not sep:
            host, port_text = entry, ""
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ModelpressError(f"CLUSTER_SPEC entry {entry!r} is not 'host:port' with a port 1-65535")
    return host, int(port_text)


def resolve_nodes(layout: Layout, environ: Mapping[str, str]) -> Nodes:
    """``CLUSTER_SPEC``, when set, overrides nnodes, node_rank and the master address."""
    text = environ.get("CLUSTER_SPEC", "").strip()
    if text:
        return nodes_from_cluster_spec(text, layout.master_port)
    return Nodes(layout.nnodes, layout.node_rank, layout.master_addr, layout.master_port)


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ------------------------------------------------------------------ data and the split

def rank_batches(n: int, global_batch: int, rank: int, world: int, seed: int, epoch: int,
                 *, whole_batches_only: bool = False) -> list[list[int]]:
    """This rank's share of every global batch of one epoch, in DistributedSampler order.

    The sampler permutes ``range(n)`` by (seed, epoch), drops the last ``n % world``
    examples (so no example is seen twice in an epoch) and deals position p to rank
    ``p % world``. Cutting each rank's list into runs of ``global_batch / world`` makes the
    ranks' shares of step k together exactly batch k of a single process with the same seed,
    so results do not depend on the process count. `global_batch` must divide by `world`.
    """
    from torch.utils.data import BatchSampler, DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return list(BatchSampler(sampler, global_batch // world, drop_last=whole_batches_only))


def pipeline_layers(model: nn.Module) -> list[tuple[str | None, nn.Module]]:
    """The model as a flat sequence of (state-dict prefix, layer) that reproduces its forward."""
    if isinstance(model, models.InputNormalised):  # normalisation first, then the network's layers
        return [(None, _Normalise(model))] + [(None if p is None else f"net.{p}", m)
                                              for p, m in pipeline_layers(model.net)]
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    if isinstance(model, (models.SmallCNN, models.MobileNetV2)):
        # forward: classifier(dropout(pool(features(x)).flatten(1)))
        return ([(f"features.{name}", m) for name, m in model.features.named_children()]
                + [("pool", model.pool), (None, nn.Flatten(1)), ("dropout", model.dropout),
                   ("classifier", model.classifier)])
    raise ModelpressError(f"pipeline parallelism cannot cut a {type(model).__name__} into stages; "
                          "it knows sequential models (mlp) and the cnn/mobilenet_v2 layout. "
                          "Use parallelism 'ddp' for this architecture.")


class _Normalise(nn.Module):
    """InputNormalised's own step, as a layer a pipeline stage can hold."""

    def __init__(self, wrapper: nn.Module):
        super().__init__()
        self.register_buffer("mean", wrapper.mean.clone(), persistent=False)
        self.register_buffer("inv_std", wrapper.inv_std.clone(), persistent=False)

    def forward(self, x):
        return (x - self.mean) * self.inv_std


def balance(costs: list[float], stages: int, cuttable: list[int] | None = None) -> list[tuple[int, int]]:
    """Cut a sequence of layer costs into `stages` contiguous, non-empty, near-equal runs.

    `cuttable` lists the layer indices a stage may start at (default: any).
    """
    n = len(costs)
    allowed = sorted(set(range(1, n) if cuttable is None else cuttable) & set(range(1, n)))
    if stages - 1 > len(allowed):
        raise ModelpressError(f"the model can be cut in {len(allowed) + 1} stages at most, fewer than "
                              f"{stages} processes; run at most {len(allowed) + 1} processes in all "
                              "(nproc_per_node x nodes) for pipeline parallelism")
    prefix = list(itertools.accumulate(costs))
    cuts = [0]
    for k in range(1, stages):
        target = prefix[-1] * k / stages
        later = [c for c in allowed if c > cuts[-1]]
        candidates = later[:len(later) - (stages - 1 - k)]  # leave a cut for every later stage
        cuts.append(min(candidates, key=lambda c: abs(prefix[c - 1] - target)))
    cuts.append(n)
    return list(zip(cuts[:-1], cuts[1:]))


def _owns(prefixes: list[str], key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def cut_stages(model: nn.Module, feature_shape, stages: int, micro: int):
    """Cut the model into `stages` stages of near-equal forward FLOPs.

    Returns the flat layers, each stage's (first, end) layer range, and one micro-batch's
    activation at every boundary: the model input, then each stage's output.
    """
    layers = pipeline_layers(model)
    _, per_layer = flops_mod.forward_flops(model, feature_shape, per_layer=True)
    costs = [1 + sum(f for name, f in per_layer.items() if prefix is not None and _owns([prefix], name))
             for prefix, _ in layers]
    # a stage may not start with an in-place layer: it would overwrite the activation it receives
    bounds = balance(costs, stages, [i for i, (_, m) in enumerate(layers) if not getattr(m, "inplace", False)])
    return layers, bounds, _boundary_activations(layers, bounds, feature_shape, micro)


@torch.no_grad()
def _boundary_activations(layers, bounds, feature_shape, micro: int) -> list[torch.Tensor]:
    """One micro-batch's activation at every stage boundary: the model input, then each stage's output.

    Run in eval mode so batch-norm running statistics stay untouched; the stages get these
    shapes up front instead of inferring them from a forward pass on uninitialised tensors.
    """
    x = torch.zeros((micro, *feature_shape))
    acts = [x]
    for a, b in bounds:
        for _, layer in layers[a:b]:
            was = layer.training
            x = layer.eval()(x)
            layer.train(was)
        # stage inputs past the first and every output carry gradients: say so in the metadata
        acts.append(x.detach().requires_grad_(True))
    return acts


# --------------------------------------------------------------------- the launcher

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
    layout = (layout or Layout()).validate()
    nodes = resolve_nodes(layout, os.environ if environ is None else environ)
    device_type = training.resolve_device(settings.device).type
    backend = layout.backend if layout.backend != "auto" else ("nccl" if device_type == "cuda" else "gloo")
    if backend == "nccl" and device_type != "cuda":
        raise ModelpressError("backend 'nccl' needs CUDA GPUs, and training runs on the CPU here; "
                              "use backend 'auto' or 'gloo'")
    gpus = torch.cuda.device_count() if device_type == "cuda" else 0
    nproc = layout.nproc_per_node or (gpus if device_type == "cuda" else cpu_cores())
    if device_type == "cuda" and nproc > gpus:
        raise ModelpressError(f"nproc_per_node {nproc} asks for more processes than this node's {gpus} "
                              "GPU(s); use 0 (one per GPU) or at most the GPU count")
    world = nodes.nnodes * nproc
    batch = settings.batch_size
    if layout.parallelism == "ddp" and batch % world:
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
               threads=layout.threads_per_process or max(1, cpu_cores() // nproc), verbose=verbose)


def train(dataset_dir: str, out_dir: str, *, architecture: str = "mlp", model_args: dict | None = None,
          settings: training.TrainSettings | None = None, layout: Layout | None = None,
          environ: Mapping[str, str] | None = None, log: Callable[[str], None] = print,
          verbose: bool = True) -> dict | None:
    """Launch this node's share of distributed training; the result on the node of rank 0, else None.

    `verbose` False silences the workers' per-epoch lines (rank 0 prints them otherwise).
    """
    import tempfile

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    t0 = time.perf_counter()
    job = plan(dataset_dir, out_dir, architecture=architecture, model_args=model_args, settings=settings,
               layout=layout, environ=environ, verbose=verbose)
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


# ---------------------------------------------------------------------- the workers

@dataclass
class _Rank:
    rank: int
    local_rank: int
    world: int
    device: torch.device
    log: Callable[[str], None]

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def worker(job: Job) -> dict | None:
    """One training process (started by the launcher): global rank 0 returns the result."""
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    torch.set_num_threads(job.threads)
    device = torch.device("cuda", local_rank) if job.device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(job.backend)
    me = _Rank(rank, local_rank, dist.get_world_size(), device,
               log=functools.partial(print, flush=True) if rank == 0 and job.verbose else (lambda _msg: None))
    # the settings chose the device type; each rank takes its own device (cuda:<local rank>)
    job = replace(job, settings=replace(job.settings, device=str(device)))
    try:
        run = _train_ddp if job.layout.parallelism == "ddp" else _train_pipeline
        return run(job, me)
    finally:
        dist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them finished
        torch.cuda.synchronize(device)


def _gather(obj, me: _Rank) -> list | None:
    import torch.distributed as dist

    out = [None] * me.world if me.is_zero else None
    dist.gather_object(obj, out, dst=0)
    return out


def _train_loss(total: float, seen: int, device: torch.device, src: int | None = None) -> tuple[float, int]:
    """Sum (src None) or take from rank `src` the epoch's loss total and example count."""
    import torch.distributed as dist

    t = torch.tensor([total, float(seen)], dtype=torch.float64, device=device)
    if src is None:
        dist.all_reduce(t)
    else:
        dist.broadcast(t, src=src)
    return float(t[0] / t[1]), int(t[1])


class _GradientBytes:
    """DDP communication hook state: counts the gradient bytes handed to all-reduce."""

    def __init__(self):
        self.bytes = 0


def _counting_allreduce(state: _GradientBytes, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buffer = bucket.buffer()
    state.bytes += buffer.numel() * buffer.element_size()
    return default_hooks.allreduce_hook(None, bucket)  # the default: all-reduce, divide by world


def _train_ddp(job: Job, me: _Rank) -> dict | None:
    from torch.nn.parallel import DistributedDataParallel

    settings = job.settings
    ds, spec, model = training.prepare(job.dataset_dir, job.architecture, job.model_args, settings)
    fwd = training.describe(model, ds, spec, settings, LABEL, me.log)
    torch.manual_seed(settings.seed + me.rank)  # same initial weights, own dropout masks
    model.to(me.device)
    if me.device.type == "cuda" and me.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over the global batch
    ddp = DistributedDataParallel(model, device_ids=[me.device.index] if me.device.type == "cuda" else None)
    counter = _GradientBytes()
    ddp.register_comm_hook(counter, _counting_allreduce)
    xtr, ytr = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    n, batch = len(xtr), settings.batch_size
    per_epoch = n // me.world * me.world
    opt, sched = training.make_optimiser(ddp.parameters(), settings,
                                         settings.epochs * math.ceil(per_epoch / batch))

    def step(share: list[int], epoch: int) -> float:
        xb, yb = xtr[share].to(me.device), ytr[share].to(me.device)
        opt.zero_grad(set_to_none=True)
        # every share has batch/world examples and DDP averages the ranks' gradients: the mean
        # of the shares' mean losses is the global batch's mean loss
        loss = F.cross_entropy(ddp(xb), yb)
        training.check_finite(loss, epoch)
        loss.backward()
        opt.step()
        sched.step()
        return loss.item() * len(share)

    fitted, step_seconds = _epochs(
        job, me, model, ddp, per_epoch, step,
        batches=lambda epoch: rank_batches(n, batch, me.rank, me.world, settings.seed, epoch),
        train_loss=lambda total, seen: _train_loss(total, seen, me.device),
        validate=lambda: _sharded_validation(model, ds, me))
    stats = _gather({"step_ms": 1e3 * statistics.median(step_seconds), "allreduce_bytes": counter.bytes,
                     "steps": len(step_seconds)}, me)
    if not me.is_zero:
        return None
    result = training.finish(model, spec, ds, settings, fitted, fwd, job.out_dir, label=LABEL, log=me.log)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    per_step = stats[0]["allreduce_bytes"] / stats[0]["steps"]
    metrics = {
        **_common_metrics(job, fitted),
        # counted by the DDP communication hook: the gradient buckets each rank all-reduces per step
        "allreduce_bytes_per_step": per_step,
        # from parameter sizes: should equal the count above (every gradient is all-reduced once)
        "gradient_bytes": grad_bytes,
        # what a ring all-reduce sends per rank: 2 (world - 1) / world x the buffer
        "ring_bytes_sent_per_rank_per_step": 2 * (me.world - 1) / me.world * per_step,
        **_per_rank("step_ms", [s["step_ms"] for s in stats]),
    }
    return _with(result, metrics, job)


@torch.no_grad()
def _sharded_validation(model: nn.Module, ds, me: _Rank) -> dict:
    """Each rank scores every world-th validation example; the sums are all-reduced."""
    import torch.distributed as dist

    x, y = ds.validation.x[me.rank::me.world], ds.validation.y[me.rank::me.world]
    logits = torch.from_numpy(torch_scoring.predict_logits(model, x, me.device))
    labels = torch.from_numpy(y)
    sums = torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item() if len(y) else 0.0,
                         float((logits.argmax(1) == labels).sum()), float(len(y))],
                        dtype=torch.float64, device=me.device)
    dist.all_reduce(sums)
    return {"loss": float(sums[0] / sums[2]), "accuracy": float(sums[1] / sums[2])}


def _epochs(job: Job, me: _Rank, model: nn.Module, trained: nn.Module, per_epoch: int,
            step: Callable[[list[int], int], float], *, batches: Callable[[int], list[list[int]]],
            train_loss: Callable[[float, int], tuple[float, int]],
            validate: Callable[[], dict]) -> tuple[dict, list[float]]:
    """The epoch loop both strategies share: timed steps, validation, log lines, early stopping.

    `step(indices, epoch)` trains on one batch and returns this rank's loss total over it;
    `train_loss` combines the ranks' totals; `validate` returns the same scores on every rank,
    so every rank makes the same early-stopping decision. Returns the `training.fit`-shaped
    summary (with the best weights loaded into `model`) and the step times.
    """
    settings = job.settings
    progress = training.Progress(settings, me.log, LABEL)
    step_seconds = []
    start = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        trained.train()
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        for indices in batches(epoch):
            ts = time.perf_counter()
            total += step(indices, epoch)
            _sync(me.device)
            step_seconds.append(time.perf_counter() - ts)
            seen += len(indices)
        train_seconds = time.perf_counter() - t0
        loss, seen = train_loss(total, seen)
        if progress.end_epoch(epoch, loss, seen, validate(), time.perf_counter() - t0, model,
                              train_seconds=train_seconds):
            break
    seconds = time.perf_counter() - start
    summary = progress.finish(model)
    return {**summary, "seconds": seconds, "examples_per_epoch": per_epoch,
            "samples_seen": per_epoch * summary["epochs_run"], "device": str(me.device)}, step_seconds


def _common_metrics(job: Job, fitted: dict) -> dict:
    train_seconds = sum(h["train_seconds"] for h in fitted["history"])
    return {"world_size": job.world_size, "nnodes": job.nodes.nnodes, "nproc_per_node": job.nproc_per_node,
            "threads_per_process": job.threads,
            # training steps only (validation excluded), all processes together
            "train_samples_per_s": fitted["samples_seen"] / train_seconds}


def _per_rank(name: str, values: list[float]) -> dict:
    out = {f"{name}_rank{r}": v for r, v in enumerate(values)}
    out[f"{name}_max"] = max(values)
    return out


def _with(result: dict, metrics: dict, job: Job) -> dict:
    result["metrics"].update(metrics)
    result["metadata"].update({"parallelism": job.layout.parallelism, "world_size": job.world_size})
    return result


def _make_stage_class():
    from torch.distributed.pipelining import PipelineStage

    class TimedStage(PipelineStage):
        """A stage that adds up the time spent computing (forward and backward of micro-batches)."""

        compute_seconds = 0.0

        def _timed(self, method, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                _sync(self.device)
                self.compute_seconds += time.perf_counter() - t0

        def forward_one_chunk(self, *args, **kwargs):
            return self._timed(super().forward_one_chunk, *args, **kwargs)

        def backward_one_chunk(self, *args, **kwargs):
            return self._timed(super().backward_one_chunk, *args, **kwargs)

    return TimedStage


def _train_pipeline(job: Job, me: _Rank) -> dict | None:
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

    settings, layout = job.settings, job.layout
    ds, spec, model = training.prepare(job.dataset_dir, job.architecture, job.model_args, settings)
    fwd = training.describe(model, ds, spec, settings, LABEL, me.log)
    torch.manual_seed(settings.seed + me.rank)  # same initial weights everywhere, own dropout masks
    micro = settings.batch_size // layout.microbatches
    layers, bounds, acts = cut_stages(model, ds.feature_shape, me.world, micro)
    first, last = me.rank == 0, me.rank == me.world - 1
    # each micro-batch's activation crosses every cut forward, and its gradient comes back
    p2p_bytes = 2 * layout.microbatches * sum(a.numel() * a.element_size() for a in acts[1:-1])
    lo, hi = bounds[me.rank]
    mine = layers[lo:hi]
    prefixes = [p for p, _ in mine if p is not None]
    stage_module = nn.Sequential(*[m for _, m in mine]).to(me.device)  # shares the layers with `model`
    me.log(f"[{LABEL}] {me.world} stage(s) over layers " + ", ".join(
        f"{a}-{b - 1}" for a, b in bounds) + f"; {layout.microbatches} micro-batches of {micro}, "
        f"{layout.schedule}")
    stage = _make_stage_class()(stage_module, me.rank, me.world, me.device,
                                input_args=acts[me.rank].to(me.device),
                                output_args=acts[me.rank + 1].to(me.device))
    schedule_class = ScheduleGPipe if layout.schedule == "gpipe" else Schedule1F1B
    # cross_entropy averages each micro-batch; scale_grads divides by their number: batch mean
    schedule = schedule_class(stage, layout.microbatches, loss_fn=F.cross_entropy, scale_grads=True)
    xtr, ytr = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    n, batch = len(xtr), settings.batch_size
    steps_per_epoch = n // batch
    if steps_per_epoch == 0:
        raise ModelpressError(f"the training split has {n} examples, fewer than one batch of {batch}; "
                              "lower batch_size")
    opt, sched = training.make_optimiser(stage_module.parameters(), settings, settings.epochs * steps_per_epoch)
    pipe = {"step_s": 0.0, "compute_s": 0.0}  # schedule steps only: the optimiser is not pipelined

    def step(idx: list[int], epoch: int) -> float:
        args = (xtr[idx].to(me.device),) if first else ()
        target = ytr[idx].to(me.device) if last else None
        losses = [] if last else None
        opt.zero_grad(set_to_none=True)
        before, t0 = stage.compute_seconds, time.perf_counter()
        schedule.step(*args, target=target, losses=losses)
        _sync(me.device)
        pipe["step_s"] += time.perf_counter() - t0
        pipe["compute_s"] += stage.compute_seconds - before
        opt.step()
        sched.step()
        if not last:
            return 0.0  # the loss is only known on the last stage
        loss = torch.stack([mb.detach() for mb in losses]).mean()
        training.check_finite(loss, epoch)
        return loss.item() * len(idx)

    fitted, step_seconds = _epochs(
        job, me, model, stage_module, steps_per_epoch * batch, step,
        # every rank walks the same order; micro-batch shapes are fixed, so partial batches are left out
        batches=lambda epoch: rank_batches(n, batch, 0, 1, settings.seed, epoch, whole_batches_only=True),
        train_loss=lambda total, seen: _train_loss(total, seen, me.device, src=me.world - 1),
        validate=lambda: _pipeline_validation(schedule, stage_module, ds, batch, first, last, me))
    stage_state = {k: v.detach().cpu() for k, v in model.state_dict().items() if _owns(prefixes, k)}
    stats = _gather({"state": stage_state, "step_ms": 1e3 * statistics.median(step_seconds), **pipe}, me)
    if not me.is_zero:
        return None
    model.load_state_dict({k: v for s in stats for k, v in s["state"].items()})  # strict: every stage
    model.to(me.device).eval()
    result = training.finish(model, spec, ds, settings, fitted, fwd, job.out_dir, label=LABEL, log=me.log)
    idle = [max(0.0, 1 - s["compute_s"] / s["step_s"]) for s in stats]
    metrics = {
        **_common_metrics(job, fitted),
        "pipeline_stages": me.world, "microbatches": layout.microbatches,
        # the schedule's ideal idle share, (stages - 1) / (microbatches + stages - 1) ...
        "bubble_fraction": (me.world - 1) / (layout.microbatches + me.world - 1),
        # ... beside the measured one: each rank's share of step time not spent in forward/backward
        **_per_rank("idle_fraction", idle),
        "idle_fraction_mean": sum(idle) / len(idle),
        **_per_rank("step_ms", [s["step_ms"] for s in stats]),
        # from activation shapes, see above
        "p2p_bytes_per_step": p2p_bytes,
    }
    result["metadata"]["pipeline_schedule"] = layout.schedule
    return _with(result, metrics, job)


def _pipeline_validation(schedule, stage_module: nn.Module, ds, batch: int, first: bool, last: bool,
                         me: _Rank) -> dict:
    """Forward the validation split through the pipeline in whole batches (the last one padded)."""
    import torch.distributed as dist

    x, y = torch.from_numpy(ds.validation.x), torch.from_numpy(ds.validation.y)
    stage_module.eval()
    logits = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            real = min(batch, len(x) - i)
            xb = torch.zeros((batch, *x.shape[1:]), dtype=x.dtype)
            yb = torch.zeros(batch, dtype=y.dtype)
            xb[:real], yb[:real] = x[i:i + batch], y[i:i + batch]
            out = schedule.eval(*((xb.to(me.device),) if first else ()),
                                target=yb.to(me.device) if last else None)
            if last:
                logits.append(out[:real].float().cpu())
    stage_module.train()
    scores = [None]
    if last:
        scored = score_logits(torch.cat(logits).numpy(), ds.validation.y, len(ds.class_names))
        scores = [{"loss": scored["loss"], "accuracy": scored["accuracy"]}]
    dist.broadcast_object_list(scores, src=me.world - 1)
    return scores[0]
