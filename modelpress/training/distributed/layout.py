"""Where the processes run: the layout parameters, the machines taking part (from the
parameters or Vertex AI's ``CLUSTER_SPEC``) and this machine's cores.

``CLUSTER_SPEC`` is read here, not in ``deploy/vertex``: it is an environment variable every
replica of a Vertex training job carries, parsed without any Google Cloud call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping

from modelpress.core.errors import ModelpressError

STRATEGIES = ("ddp", "fsdp", "pipeline")
SCHEDULES = ("gpipe", "1f1b")
BACKENDS = ("auto", "gloo", "nccl")
MIXED_PRECISION = ("auto", "none", "bf16")
# torchrun: torch's elastic launcher on every node; ray: Ray Train's workers (a local Ray, or the cluster at ray_address)
ENGINES = ("torchrun", "ray")  # fsdp: bf16 compute with fp32 reductions where the GPU has bf16
# Vertex AI pools that train: workerpool0 is the master (primary replica), workerpool1 the
# workers; workerpool2/3 (reduction server, evaluators) take no part in the process group.
TRAINING_POOLS = ("workerpool0", "workerpool1")


@dataclass
class Layout:
    """How to spread training over processes and machines (the component's parameters)."""

    parallelism: str = "ddp"  # "ddp" | "fsdp" | "pipeline" (not "strategy": a Vertex CustomJob field)
    nproc_per_node: int = 0  # 0: one per GPU, else one per CPU core
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str = "auto"  # auto: nccl with CUDA, else gloo
    microbatches: int = 4  # pipeline only
    schedule: str = "gpipe"  # pipeline only
    mixed_precision: str = "auto"  # fsdp only: auto (bf16 compute on a GPU with bf16, else fp32), none, bf16
    threads_per_process: int = 0  # torch threads in each process; 0: this node's cores / processes
    rendezvous_timeout: int = 900  # seconds to wait for every node to join
    # ray: nnodes x nproc_per_node Ray workers, placed by Ray; node_rank, master_addr/port,
    # rendezvous_timeout and CLUSTER_SPEC are torchrun's and not used
    engine: str = "torchrun"
    ray_address: str = ""  # ray only: a running cluster (ray://head:10001, head:6379); "": a local Ray
    resources_per_worker: dict | None = None  # ray only: e.g. {"CPU": 4, "GPU": 1}; None: 1 CPU (+ 1 GPU on CUDA)

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
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.engine not in ENGINES:
            problems.append(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        if not isinstance(self.ray_address, str):
            problems.append(f"ray_address must be a Ray cluster address or empty, got {self.ray_address!r}")
        resources = self.resources_per_worker
        if resources is not None and (not isinstance(resources, dict) or not all(
                isinstance(k, str) and _amount(v) for k, v in resources.items())):
            problems.append('resources_per_worker must map Ray resource names to amounts >= 0, e.g. '
                            f'{{"CPU": 4, "GPU": 1}}; got {resources!r}')
        if self.engine != "ray" and (self.ray_address or resources):
            problems.append("ray_address and resources_per_worker are for engine 'ray'")
        if self.engine == "ray" and self.ray_address and not self.nproc_per_node:
            problems.append("with a ray_address, set nproc_per_node (x nnodes): the Ray workers to start; "
                            "the cluster's devices cannot be counted from here")
        if problems:
            raise ModelpressError("invalid distributed layout: " + "; ".join(problems))
        return self


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _amount(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


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

