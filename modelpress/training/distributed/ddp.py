"""The data-parallel worker: every process holds the whole model and trains on its share of
each global batch; DistributedDataParallel averages the gradients (gloo on CPU, NCCL on GPU).
Batch norm uses each process's share on CPU, the global batch (SyncBatchNorm) on GPU."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from modelpress import training
from modelpress.evaluation import torch_scoring
from modelpress.training.distributed.ranks import (LABEL, Rank, common_metrics, data_parallel_step, gather,
                                                   memory_metrics,
                                                   per_rank, rank_batches, train_loss, with_metrics)
from modelpress.training.loop import run_epochs

if TYPE_CHECKING:  # the launcher imports this module and pickles the job into it
    from modelpress.training.distributed.launcher import Job


class _GradientBytes:
    """DDP communication hook state: counts the gradient bytes handed to all-reduce."""

    def __init__(self):
        self.bytes = 0


def _counting_allreduce(state: _GradientBytes, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    buffer = bucket.buffer()
    state.bytes += buffer.numel() * buffer.element_size()
    return default_hooks.allreduce_hook(None, bucket)  # the default: all-reduce, divide by world


def run(job: Job, me: Rank) -> dict | None:
    """Train with DDP; global rank 0 saves the model and returns the result, the others None."""
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
    held: dict = {}
    step_and_measure, per_epoch = data_parallel_step(ddp, model, ds, settings, me, held)
    n, batch = len(ds.train.x), settings.batch_size
    fitted, step_seconds = run_epochs(
        model, settings, trained=ddp, device=me.device, examples_per_epoch=per_epoch, log=me.log, label=LABEL,
        # every share has batch/world examples and DDP averages the ranks' gradients: the mean
        # of the shares' mean losses is the global batch's mean loss
        step=step_and_measure,
        batches=lambda epoch: rank_batches(n, batch, me.rank, me.world, settings.seed, epoch),
        train_loss=lambda total, seen: train_loss(total, seen, me.device),
        validate=lambda: _sharded_validation(model, ds, me))
    stats = gather({"step_ms": 1e3 * statistics.median(step_seconds), "allreduce_bytes": counter.bytes,
                    "steps": len(step_seconds), **held}, me)
    if not me.is_zero:
        return None
    result = training.finish(model, spec, ds, settings, fitted, fwd, job.out_dir, label=LABEL, log=me.log)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    per_step = stats[0]["allreduce_bytes"] / stats[0]["steps"]
    metrics = {
        **common_metrics(job, fitted),
        # counted by the DDP communication hook: the gradient buckets each rank all-reduces per step
        "allreduce_bytes_per_step": per_step,
        # from parameter sizes: should equal the count above (every gradient is all-reduced once)
        "gradient_bytes": grad_bytes,
        # what a ring all-reduce sends per rank: 2 (world - 1) / world x the buffer
        "ring_bytes_sent_per_rank_per_step": 2 * (me.world - 1) / me.world * per_step,
        **per_rank("step_ms", [s["step_ms"] for s in stats]),
        **memory_metrics(stats),
    }
    return with_metrics(result, metrics, job)


@torch.no_grad()
def _sharded_validation(model: nn.Module, ds, me: Rank) -> dict:
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
