"""What the DDP and pipeline workers share: a process's place in the group, its batches in
DistributedSampler order, the collectives that combine the ranks' figures, and the metrics
every distributed result carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

if TYPE_CHECKING:  # the launcher imports the workers; they only read the job it pickles
    from modelpress.training.distributed.launcher import Job

LABEL = "distributed-train"


@dataclass
class Rank:
    """This process in the group; `log` prints on global rank 0 only."""

    rank: int
    local_rank: int
    world: int
    device: torch.device
    log: Callable[[str], None]

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


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


def gather(obj, me: Rank) -> list | None:
    """Every rank's `obj` on rank 0 (in rank order); None elsewhere."""
    import torch.distributed as dist

    out = [None] * me.world if me.is_zero else None
    dist.gather_object(obj, out, dst=0)
    return out


def train_loss(total: float, seen: int, device: torch.device, src: int | None = None) -> tuple[float, int]:
    """Sum (src None) or take from rank `src` the epoch's loss total and example count."""
    import torch.distributed as dist

    t = torch.tensor([total, float(seen)], dtype=torch.float64, device=device)
    if src is None:
        dist.all_reduce(t)
    else:
        dist.broadcast(t, src=src)
    return float(t[0] / t[1]), int(t[1])


def common_metrics(job: Job, fitted: dict) -> dict:
    train_seconds = sum(h["train_seconds"] for h in fitted["history"])
    return {"world_size": job.world_size, "nnodes": job.nodes.nnodes, "nproc_per_node": job.nproc_per_node,
            "threads_per_process": job.threads,
            # training steps only (validation excluded), all processes together
            "train_samples_per_s": fitted["samples_seen"] / train_seconds}


def local_bytes(tensors) -> int:
    """Bytes this rank holds of `tensors` (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def held_bytes(model: nn.Module, opt) -> dict:
    """Parameter, gradient and optimiser-state bytes this rank holds (after a step: gradients and
    AdamW's two moments exist)."""
    params = list(model.parameters())
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {"param_bytes": local_bytes(params), "grad_bytes": local_bytes(p.grad for p in params),
            "optimizer_bytes": local_bytes(state)}


def data_parallel_step(trained: nn.Module, model: nn.Module, ds, settings, me: Rank, held: dict):
    """(the optimiser step over this rank's share of a global batch, the examples an epoch uses) for the
    DDP and FSDP workers; after the first step `held` gets the bytes this rank holds (held_bytes)."""
    import math

    from modelpress import training
    from modelpress.training.loop import batch_step

    xtr, ytr = torch.from_numpy(ds.train.x), torch.from_numpy(ds.train.y)
    n, batch = len(xtr), settings.batch_size
    per_epoch = n // me.world * me.world  # the sampler drops what does not split evenly
    opt, sched = training.make_optimiser(trained.parameters(), settings, settings.epochs * math.ceil(per_epoch / batch))
    step = batch_step(trained, opt, sched, xtr, ytr, me.device)

    def step_and_measure(idx, epoch):
        loss = step(idx, epoch)
        if not held:  # after the first step gradients and optimiser state exist
            held.update(held_bytes(model, opt))
        return loss

    return step_and_measure, per_epoch


def memory_metrics(stats: list[dict]) -> dict:
    """Per rank and the largest: parameter, gradient and optimiser-state bytes held, and parameters +
    optimiser state together (what sharding divides; DDP holds all of it on every rank)."""
    out = {}
    for key in ("param_bytes", "grad_bytes", "optimizer_bytes"):
        out.update(per_rank(key, [s.get(key, 0) for s in stats]))
    out["params_and_optimizer_bytes_max"] = max(s.get("param_bytes", 0) + s.get("optimizer_bytes", 0) for s in stats)
    return out


def per_rank(name: str, values: list[float]) -> dict:
    out = {f"{name}_rank{r}": v for r, v in enumerate(values)}
    out[f"{name}_max"] = max(values)
    return out


def with_metrics(result: dict, metrics: dict, job: Job) -> dict:
    """The train result with the distributed metrics and the layout in its metadata."""
    result["metrics"].update(metrics)
    result["metadata"].update({"parallelism": job.layout.parallelism, "world_size": job.world_size})
    return result
