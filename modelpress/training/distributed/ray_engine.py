"""Ray Train as the second engine: the same workers (`ddp.run`, `fsdp.run`, `pipeline.run`) in Ray actors.

`train_with_ray` takes the `Job` that `launcher.plan` checked and hands `_ray_worker` to
``ray.train.torch.TorchTrainer`` with one Ray worker per process of the job (its world size).
Ray Train starts the workers and initialises the torch process group (gloo on CPU, NCCL on
GPU) before `_ray_worker` builds the `Rank` and calls `ddp.run` (or the FSDP or pipeline
worker), the loop the torchrun engine runs. Global rank 0 writes the model to ``job.out_dir``
(shared storage on a cluster) and its result comes back as Ray Train's ``Result.return_value``;
a failed worker's own error becomes the raised message.

Locally (no ``ray_address``) a private one-machine Ray is started for the step (`local_ray`)
and shut down after: no dashboard, its session files in a temporary folder, no token in
``~/.ray`` (``RAY_AUTH_MODE=disabled``), every address 127.0.0.1 and gloo on loopback. With a
``ray_address`` the step connects to that cluster and leaves it running. A Ray already
initialised in this process (a test's, a notebook's) is used as it is and left running.

Ray is optional: it is imported inside the functions, and a missing Ray is explained.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from modelpress.core.errors import ModelpressError
from modelpress.training.distributed.layout import cpu_cores
from modelpress.training.distributed.ranks import LABEL, Rank

if TYPE_CHECKING:
    from modelpress.training.distributed.launcher import Job

RUN_NAME = "modelpress-distributed-train"
# the local Ray's shared-memory object store: the job and the result travel through it, not the data
OBJECT_STORE_BYTES = 256 * 1024 ** 2
# set while a local Ray starts and runs: no auth token written to ~/.ray, no usage report
LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
# every Ray Train worker: print as print (Ray's print patch logs each line a second time)
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# the workers of a one-machine Ray: the gloo group's sockets on loopback (gloo picks eth0 otherwise)
SINGLE_NODE_WORKER_ENV = {"GLOO_SOCKET_IFNAME": "lo"}
INSTALL_HINT = 'pip install "modelpress[ray]" (`make install` installs it)'


def import_ray():
    """The ray module with Ray Train and its torch trainer, or a ModelpressError naming the install."""
    try:
        import ray
        import ray.train  # noqa: F401
        import ray.train.torch  # noqa: F401
    except ImportError as exc:
        raise ModelpressError(f"the Ray engine needs Ray Train, which is not installed ({exc}); "
                              f"{INSTALL_HINT}, or use engine 'torchrun'") from None
    return ray


def train_with_ray(job: Job, *, ray_address: str = "", resources_per_worker: dict | None = None,
                   storage_dir: str = "", log: Callable[[str], None] = print, on_start: Callable | None = None,
                   on_saved: Callable | None = None) -> dict | None:
    """Run `job` with Ray Train: ``job.world_size`` workers, each on a GPU when the job trains on CUDA.

    `ray_address` names a running cluster (``ray://head:10001`` or ``head:6379``); empty: a Ray
    already initialised in this process, else a private local Ray for the call.
    `resources_per_worker` is Ray's per-worker request (default 1 CPU, plus 1 GPU on CUDA).
    `storage_dir` is Ray Train's run folder (``RunConfig.storage_path``; no checkpoints are
    written there); empty: a temporary folder removed after a local run, Ray's default on a
    cluster. Returns rank 0's result, as `launcher.train` does; a failed worker raises its
    own ModelpressError message (or which rank failed and how).

    On a cluster whose nodes share no file system, `on_start(job) -> job` runs first in every
    worker (to bring the dataset to its node and point the job at it) and `on_saved(out_dir)` runs
    on rank 0 once the artifact is written (to copy it to shared storage); both are pickled by
    reference, so they must be module-level functions (or partials of them).
    """
    ray = import_ray()
    from ray.train import FailureConfig, LoggingConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    t0 = time.perf_counter()
    use_gpu = job.device_type == "cuda"
    resources = _resources(resources_per_worker, use_gpu)
    with contextlib.ExitStack() as stack:
        where = stack.enter_context(_session(ray, ray_address, math.ceil(job.world_size * resources["CPU"]), log))
        if not storage_dir and not ray_address:
            storage_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="modelpress-ray-run-"))
        one_node = len([n for n in ray.nodes() if n.get("Alive")]) == 1
        log(f"[{LABEL}] ray: {job.layout.parallelism} over {job.world_size} Ray worker(s) on {where}, "
            f"{job.backend} on {job.device_type}, {resources} and {job.threads} thread(s) each")
        trainer = TorchTrainer(
            _ray_worker, train_loop_config={"job": job, "on_start": on_start, "on_saved": on_saved},
            torch_config=TorchConfig(backend=job.backend),
            scaling_config=ScalingConfig(num_workers=job.world_size, use_gpu=use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name=RUN_NAME, storage_path=os.path.abspath(storage_dir) if storage_dir else None,
                failure_config=FailureConfig(max_failures=0),  # a failed step fails the same way again
                logging_config=LoggingConfig(log_level="WARNING"),
                worker_runtime_env={"env_vars": {**WORKER_ENV, **(SINGLE_NODE_WORKER_ENV if one_node else {})}}))
        t_fit = time.perf_counter()
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            raise ModelpressError(ray_failure_message(exc)) from None
        log(f"[{LABEL}] ray: Ray Train's fit took {time.perf_counter() - t_fit:.1f} s")
    out = result.return_value  # global rank 0's `ddp.run` result (Ray 2.60: Result.return_value)
    if out is not None:
        out["metrics"]["work_seconds"] = time.perf_counter() - t0
    return out


def _resources(requested: dict | None, use_gpu: bool) -> dict:
    resources = dict(requested or {})
    bad = {k: v for k, v in resources.items()
           if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
    if bad:
        raise ModelpressError("resources_per_worker maps Ray resource names to amounts >= 0, e.g. "
                              f'{{"CPU": 2, "GPU": 1}}; got {bad}')
    resources.setdefault("CPU", 1)
    if use_gpu:
        resources.setdefault("GPU", 1)
    elif resources.get("GPU"):
        raise ModelpressError(f"resources_per_worker asks for GPUs ({resources}) but the job trains on the CPU; "
                              "set device to cuda (or auto where torch sees GPUs)")
    return resources


@contextlib.contextmanager
def _session(ray, ray_address: str, cpus: int, log: Callable[[str], None]) -> Iterator[str]:
    """Ray for the step: the session already open here, the cluster at `ray_address`, or a local one."""
    if ray.is_initialized():
        yield "the Ray session already open in this process"  # its owner shuts it down
        return
    t0 = time.perf_counter()
    if ray_address:
        try:
            ray.init(address=ray_address)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
            raise ModelpressError(f"cannot connect to the Ray cluster at {ray_address!r} ({exc}); check "
                                  "ray_address (ray://host:10001 or host:6379) and that the cluster runs "
                                  "the Ray and Python versions of this image") from None
        log(f"[{LABEL}] ray: connected to {ray_address} in {time.perf_counter() - t0:.1f} s")
        try:
            yield f"the Ray cluster at {ray_address}"
        finally:
            ray.shutdown()  # this driver's connection only: the cluster keeps running
        return
    with local_ray(max(cpu_cores(), cpus)):
        log(f"[{LABEL}] ray: local Ray started in {time.perf_counter() - t0:.1f} s")
        yield "a local Ray on 127.0.0.1"


@contextlib.contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[None]:
    """A private one-machine Ray on 127.0.0.1 for the block (`num_cpus`: this machine's cores), then shut down.

    No dashboard, session files in a temporary folder, no ``~/.ray`` token, every process's
    address 127.0.0.1 (the gloo group's rendezvous included) rather than the machine's.
    """
    ray = import_ray()
    import ray._private.ray_constants as ray_constants

    saved = {k: os.environ.get(k) for k in LOCAL_RAY_ENV}
    # a short path: Ray's unix sockets live under it, and socket paths are limited to ~107 bytes
    temp_dir = tempfile.mkdtemp(prefix="modelpress-ray-")
    os.environ.update(LOCAL_RAY_ENV)
    # Ray 2.60 swaps _node_ip_address 127.0.0.1 for the machine's routable address unless, as on
    # macOS and Windows, it runs without clusters (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read at import)
    clusters = getattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    try:
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            ray.init(num_cpus=num_cpus or cpu_cores(), include_dashboard=False, _temp_dir=temp_dir,
                     object_store_memory=OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1",
                     runtime_env={"env_vars": dict(SINGLE_NODE_WORKER_ENV),
                                  "worker_process_setup_hook": _quiet_placement_group_cleaner()})
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = clusters
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp_dir, ignore_errors=True)


def _quiet_placement_group_cleaner() -> Callable[[], None]:
    """A setup hook for every process of a local Ray (pickled by value: a nested function).

    Ray Train's placement-group cleaner asks the state API, which the dashboard serves, whether
    the controller lives, and warns every few seconds when there is no dashboard.
    """
    def hook() -> None:
        import logging

        logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(
            logging.ERROR)

    return hook


def ray_failure_message(exc: BaseException) -> str:
    """The worker's own ModelpressError message, else which rank failed and how.

    `exc` is what ``TorchTrainer.fit()`` raised: a ``WorkerGroupError`` whose
    ``worker_failures`` maps each failed rank to its exception (the worker's own, unpickled),
    or a ``ControllerError`` when Ray Train itself failed (scheduling, storage, ...).
    """
    failures = getattr(exc, "worker_failures", None)
    if failures:
        for rank in sorted(failures):
            if isinstance(failures[rank], ModelpressError):
                return _first_arg(failures[rank])
        rank = min(failures)
        err = failures[rank]
        return (f"distributed training failed in Ray worker rank {rank}: {type(err).__name__}: "
                f"{_first_line(err)}. Its traceback is in the log above (or in the Ray session's worker logs).")
    controller = getattr(exc, "controller_failure", None)
    if controller is not None:
        return (f"Ray Train failed before or around the workers: {type(controller).__name__}: "
                f"{_first_line(controller)}")
    return f"Ray Train failed: {type(exc).__name__}: {_first_line(exc)}"


def _first_arg(err: BaseException) -> str:
    return str(err.args[0]) if err.args else str(err)


def _first_line(err: BaseException) -> str:
    text = _first_arg(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def _ray_worker(config: dict) -> dict | None:
    """One Ray Train worker: the process group is up; global rank 0 returns the result."""
    import ray.train
    import ray.train.torch

    from modelpress.training.distributed import ddp, fsdp, pipeline

    job: Job = config["job"]
    if config.get("on_start"):
        job = config["on_start"](job)
    ctx = ray.train.get_context()
    rank, local_rank, world = ctx.get_world_rank(), ctx.get_local_rank(), ctx.get_world_size()
    if world != job.world_size:
        raise ModelpressError(f"Ray started {world} workers for a job planned for {job.world_size}")
    torch.set_num_threads(job.threads)
    # Ray gives each GPU worker its own device (CUDA_VISIBLE_DEVICES); the settings chose the type
    device = ray.train.torch.get_device() if job.device_type == "cuda" else torch.device("cpu")
    me = Rank(rank, local_rank, world, device,
              log=functools.partial(print, flush=True) if rank == 0 and job.verbose else (lambda _msg: None))
    job = replace(job, settings=replace(job.settings, device=str(device)))
    # the workers launcher.worker runs under torchrun; Ray Train owns the process group's life
    run = {"ddp": ddp.run, "fsdp": fsdp.run, "pipeline": pipeline.run}[job.layout.parallelism]
    result = run(job, me)
    if result is not None and config.get("on_saved"):
        config["on_saved"](job.out_dir)
    return result

