"""training.distributed: the training loop spread over processes and machines by torch's
elastic launcher (gloo on CPU, NCCL on GPU). `layout` says where the processes run (the
parameters, or Vertex AI's CLUSTER_SPEC); `launcher` checks a job before any process starts,
launches it and turns a worker's failure into its message; `ddp` (data parallel) and
`pipeline` (the model cut into stages by `stages`) are the workers, which share `ranks`' helpers
and `training.loop.run_epochs`, the one epoch loop; only global rank 0 writes the model.
`ray_engine` is the second engine (layout engine "ray"): Ray Train runs the same workers."""

from modelpress.training.distributed.launcher import RUN_ID, Job, failure_message, plan, train, worker
from modelpress.training.distributed.layout import (BACKENDS, ENGINES, SCHEDULES, STRATEGIES, TRAINING_POOLS, Layout,
                                                    Nodes, cpu_cores, nodes_from_cluster_spec, resolve_nodes)
from modelpress.training.distributed.ranks import LABEL, rank_batches
from modelpress.training.distributed.ray_engine import train_with_ray
from modelpress.training.distributed.stages import _owns, balance, cut_stages, pipeline_layers

__all__ = ["BACKENDS", "ENGINES", "LABEL", "RUN_ID", "SCHEDULES", "STRATEGIES", "TRAINING_POOLS", "Job", "Layout", "Nodes",
           "_owns", "balance", "cpu_cores", "cut_stages", "failure_message", "nodes_from_cluster_spec",
           "pipeline_layers", "plan", "rank_batches", "resolve_nodes", "train", "train_with_ray", "worker"]
