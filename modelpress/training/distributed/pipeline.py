"""The pipeline-parallel worker: the model is cut into one stage per process
(`torch.distributed.pipelining`), each global batch is split into micro-batches and run by a
GPipe or 1F1B schedule; rank 0 puts the stages back together into the saved model."""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from modelpress import training
from modelpress.core.errors import ModelpressError
from modelpress.evaluation import score_logits
from modelpress.training.distributed.ranks import (LABEL, Rank, common_metrics, gather, per_rank, rank_batches,
                                                   train_loss, with_metrics)
from modelpress.training.distributed.stages import _owns, cut_stages
from modelpress.training.loop import run_epochs, sync

if TYPE_CHECKING:  # the launcher imports this module and pickles the job into it
    from modelpress.training.distributed.launcher import Job


def _make_stage_class():
    # built on first use: torch.distributed.pipelining is imported only by pipeline workers
    from torch.distributed.pipelining import PipelineStage

    class TimedStage(PipelineStage):
        """A stage that adds up the time spent computing (forward and backward of micro-batches)."""

        compute_seconds = 0.0

        def _timed(self, method, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                sync(self.device)
                self.compute_seconds += time.perf_counter() - t0

        def forward_one_chunk(self, *args, **kwargs):
            return self._timed(super().forward_one_chunk, *args, **kwargs)

        def backward_one_chunk(self, *args, **kwargs):
            return self._timed(super().backward_one_chunk, *args, **kwargs)

    return TimedStage


def run(job: Job, me: Rank) -> dict | None:
    """Train this rank's stage; global rank 0 saves the whole model and returns the result."""
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
        sync(me.device)
        pipe["step_s"] += time.perf_counter() - t0
        pipe["compute_s"] += stage.compute_seconds - before
        opt.step()
        sched.step()
        if not last:
            return 0.0  # the loss is only known on the last stage
        loss = torch.stack([mb.detach() for mb in losses]).mean()
        training.check_finite(loss, epoch)
        return loss.item() * len(idx)

    fitted, step_seconds = run_epochs(
        model, settings, step=step, trained=stage_module, device=me.device,
        examples_per_epoch=steps_per_epoch * batch, log=me.log, label=LABEL,
        # every rank walks the same order; micro-batch shapes are fixed, so partial batches are left out
        batches=lambda epoch: rank_batches(n, batch, 0, 1, settings.seed, epoch, whole_batches_only=True),
        train_loss=lambda total, seen: train_loss(total, seen, me.device, src=me.world - 1),
        validate=lambda: _pipeline_validation(schedule, stage_module, ds, batch, first, last, me))
    stage_state = {k: v.detach().cpu() for k, v in model.state_dict().items() if _owns(prefixes, k)}
    stats = gather({"state": stage_state, "step_ms": 1e3 * statistics.median(step_seconds), **pipe}, me)
    if not me.is_zero:
        return None
    model.load_state_dict({k: v for s in stats for k, v in s["state"].items()})  # strict: every stage
    model.to(me.device).eval()
    result = training.finish(model, spec, ds, settings, fitted, fwd, job.out_dir, label=LABEL, log=me.log)
    idle = [max(0.0, 1 - s["compute_s"] / s["step_s"]) for s in stats]
    metrics = {
        **common_metrics(job, fitted),
        "pipeline_stages": me.world, "microbatches": layout.microbatches,
        # the schedule's ideal idle share, (stages - 1) / (microbatches + stages - 1) ...
        "bubble_fraction": (me.world - 1) / (layout.microbatches + me.world - 1),
        # ... beside the measured one: each rank's share of step time not spent in forward/backward
        **per_rank("idle_fraction", idle),
        "idle_fraction_mean": sum(idle) / len(idle),
        **per_rank("step_ms", [s["step_ms"] for s in stats]),
        # from activation shapes, see above
        "p2p_bytes_per_step": p2p_bytes,
    }
    result["metadata"]["pipeline_schedule"] = layout.schedule
    return with_metrics(result, metrics, job)


def _pipeline_validation(schedule, stage_module: nn.Module, ds, batch: int, first: bool, last: bool,
                         me: Rank) -> dict:
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
