"""training.distributed: the training loop spread over processes by torch's elastic launcher
(gloo on CPU, NCCL on GPU): node layout (arguments or Vertex's CLUSTER_SPEC), DDP and pipeline
parallelism workers; only global rank 0 writes the model artifact."""

from modelpress.training.distributed.engine import (BACKENDS, LABEL, RUN_ID, SCHEDULES, STRATEGIES, TRAINING_POOLS,
                                                    Job, Layout, Nodes, _owns, balance, cpu_cores, cut_stages,
                                                    failure_message, nodes_from_cluster_spec, pipeline_layers, plan,
                                                    rank_batches, resolve_nodes, train, worker)

__all__ = ["BACKENDS", "LABEL", "RUN_ID", "SCHEDULES", "STRATEGIES", "TRAINING_POOLS", "Job", "Layout", "Nodes",
           "_owns", "balance", "cpu_cores", "cut_stages", "failure_message", "nodes_from_cluster_spec",
           "pipeline_layers", "plan", "rank_batches", "resolve_nodes", "train", "worker"]
