"""What the DDP and pipeline workers share: a process's place in the group, its batches in
DistributedSampler order, the collectives that combine the ranks' figures, and the metrics
every distributed result carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

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


def per_rank(name: str, values: list[float]) -> dict:
    out = {f"{name}_rank{r}": v for r, v in enumerate(values)}
    out[f"{name}_max"] = max(values)
    return out


def with_metrics(result: dict, metrics: dict, job: Job) -> dict:
    """The train result with the distributed metrics and the layout in its metadata."""
    result["metrics"].update(metrics)
    result["metadata"].update({"parallelism": job.layout.parallelism, "world_size": job.world_size})
    return result
