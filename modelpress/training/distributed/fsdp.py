"""The fully sharded data-parallel worker (FSDP2, `torch.distributed.fsdp.fully_shard`): like
DDP every process trains on its share of each global batch, but no process holds the whole
model: each block's parameters, gradients and optimiser state are split over the ranks (a 1-D
device mesh; gloo on CPU, NCCL on GPU), a block's full weights are gathered just before its
forward and backward and freed after, and gradients are reduce-scattered. For models whose
weights, gradients and AdamW state do not fit one device. Rank 0 gathers the full state dict
once training ends and writes the artifact exactly as `train` does."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import torch
from torch import nn

from modelpress import models, training
from modelpress.core.errors import ModelpressError
from modelpress.training.distributed.layout import MIXED_PRECISION
from modelpress.training.distributed.ranks import (LABEL, Rank, common_metrics, data_parallel_step, gather,
                                                   memory_metrics,
                                                   per_rank, rank_batches, train_loss, with_metrics)
from modelpress.training.loop import run_epochs, validation_scores

if TYPE_CHECKING:  # the launcher imports this module and pickles the job into it
    from modelpress.training.distributed.launcher import Job

def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one (each gathered whole only while it computes): the network's
    children that hold parameters, a Sequential or ModuleList child taken apart into its own."""
    units = []
    for child in models.unwrap(model).children():
        parts = list(child.children()) if isinstance(child, (nn.Sequential, nn.ModuleList)) else [child]
        units += [p for p in parts if any(True for _ in p.parameters())]
    return units


def mixed_precision(setting: str, device: torch.device):
    """FSDP2's MixedPrecisionPolicy: bf16 compute with fp32 reductions on a GPU that has bf16 (auto),
    or none. On the CPU gloo neither gains time nor has bf16 reductions, so auto means fp32 there."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if setting not in MIXED_PRECISION:
        raise ModelpressError(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {setting!r}")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if setting == "bf16" and not bf16:
        raise ModelpressError("mixed_precision bf16 needs a CUDA GPU with bf16 (this runs on "
                              f"{device.type}); use auto or none")
    if setting == "none" or (setting == "auto" and not bf16):
        return None, "fp32"
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32), "bf16 (fp32 reductions)"


def run(job: Job, me: Rank) -> dict | None:
    """Train with FSDP2; global rank 0 saves the full model and returns the result, the others None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    settings = job.settings
    ds, spec, model = training.prepare(job.dataset_dir, job.architecture, job.model_args, settings)
    fwd = training.describe(model, ds, spec, settings, LABEL, me.log)
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    torch.manual_seed(settings.seed + me.rank)  # same initial weights (built above), own dropout masks
    model.to(me.device)
    mesh = init_device_mesh(me.device.type, (me.world,))
    policy, precision = mixed_precision(job.layout.mixed_precision, me.device)
    options = {"mesh": mesh, **({"mp_policy": policy} if policy else {})}
    units = shard_units(model)
    for unit in units:
        fully_shard(unit, **options)
    fully_shard(model, **options)  # the root: whatever the units leave (biases of a head, buffers)
    me.log(f"[{LABEL}] fsdp: {len(units)} unit(s) + the root sharded over {me.world} rank(s), {precision}")
    held: dict = {}
    step_and_measure, per_epoch = data_parallel_step(model, model, ds, settings, me, held)
    n, batch = len(ds.train.x), settings.batch_size
    fitted, step_seconds = run_epochs(
        model, settings, device=me.device, examples_per_epoch=per_epoch, log=me.log, label=LABEL,
        # the ranks' shares of a global batch have batch/world examples each and the gradient
        # reduce-scatter averages them: the global batch's mean loss, as with DDP
        step=step_and_measure, batches=lambda epoch: rank_batches(n, batch, me.rank, me.world, settings.seed, epoch),
        train_loss=lambda total, seen: train_loss(total, seen, me.device),
        # every rank scores the whole split: each forward gathers the shards, so all ranks must run
        # the same number of forwards, and the scores (hence early stopping) come out the same
        validate=lambda: validation_scores(model, ds, me.device))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    stats = gather({"step_ms": 1e3 * statistics.median(step_seconds), **held}, me)
    if not me.is_zero:
        return None
    whole = models.build(spec)  # an unsharded copy to score and save, with the gathered weights
    whole.load_state_dict(full)
    result = training.finish(whole, spec, ds, settings, fitted, fwd, job.out_dir, label=LABEL, log=me.log)
    metrics = {**common_metrics(job, fitted), **per_rank("step_ms", [s["step_ms"] for s in stats]),
               **memory_metrics(stats), "full_param_bytes": full_bytes}
    result = with_metrics(result, metrics, job)
    result["metadata"]["mixed_precision"] = precision
    return result
