"""Distributed training: real torch.distributed processes on 127.0.0.1 (gloo, CPU)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modelpress.evaluation import torch_scoring
from modelpress import data
from modelpress.training import distributed
from modelpress import models
from modelpress import training
from modelpress.core.errors import ModelpressError

QUIET = {"log": lambda _msg: None, "verbose": False}


def free_port() -> int:
    with socket.socket() as s:  # the OS picks a free port, so parallel runs do not collide
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layout(**kwargs) -> distributed.Layout:
    return distributed.Layout(master_port=free_port(), **kwargs)


@pytest.fixture(scope="module")
def even_dir(tmp_path_factory):
    """A dataset whose training split divides by 2, so 2 ranks drop no example."""
    root = tmp_path_factory.mktemp("even")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    x = rng.normal(size=(400, 12)).astype(np.float32) + y[:, None] * 0.5
    np.savez(root / "source.npz", x=x, y=y)
    data.make_dataset(str(root / "source.npz"), str(root / "dataset"), seed=0)
    assert len(data.load_dataset(str(root / "dataset")).train.x) % 2 == 0
    return str(root / "dataset")


# ------------------------------------------------------------------ CLUSTER_SPEC

def test_cluster_spec_names_nodes_rank_and_master():
    spec = {"cluster": {"workerpool0": ["host-0:2222"], "workerpool1": ["host-1:2222", "host-2:2222"]},
            "task": {"type": "workerpool1", "index": 0}}
    assert distributed.nodes_from_cluster_spec(json.dumps(spec), 29500) == distributed.Nodes(
        nnodes=3, node_rank=1, master_addr="host-0", master_port=2222)
    spec["task"] = {"type": "workerpool1", "index": 1}
    spec["cluster"]["workerpool0"] = ["host-0"]  # no port: the configured master_port
    assert distributed.nodes_from_cluster_spec(json.dumps(spec), 29500) == distributed.Nodes(3, 2, "host-0", 29500)
    single = {"cluster": {"workerpool0": ["[fd00::1]:2222"]}, "task": {"type": "workerpool0", "index": 0}}
    assert distributed.nodes_from_cluster_spec(json.dumps(single), 1) == distributed.Nodes(1, 0, "fd00::1", 2222)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not valid JSON"),
    ('["workerpool0"]', "'cluster' and 'task'"),
    ('{"cluster": {}, "task": {"type": "workerpool0", "index": 0}}', "no cluster.workerpool0"),
    ('{"cluster": {"workerpool0": "h:1"}, "task": {"type": "workerpool0", "index": 0}}', "list of 'host:port'"),
    ('{"cluster": {"workerpool0": ["h:1"]}, "task": {"type": "workerpool2", "index": 0}}', "only .* train"),
    ('{"cluster": {"workerpool0": ["h:1"], "workerpool1": ["w:1"]}, "task": {"type": "workerpool1", "index": 1}}',
     "task.index 1 is not a replica of workerpool1, which lists 1"),
    ('{"cluster": {"workerpool0": ["h:99999"]}, "task": {"type": "workerpool0", "index": 0}}', "port 1-65535"),
])
def test_malformed_cluster_spec_is_explained(text, problem):
    with pytest.raises(ModelpressError, match=problem):
        distributed.nodes_from_cluster_spec(text, 29500)


def test_cluster_spec_overrides_the_parameters():
    lay = distributed.Layout(nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=1234)
    env = {"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["m:5"], "workerpool1": ["w:5"]},
                                       "task": {"type": "workerpool1", "index": 0}})}
    assert distributed.resolve_nodes(lay, env) == distributed.Nodes(2, 1, "m", 5)
    assert distributed.resolve_nodes(lay, {"CLUSTER_SPEC": " "}) == distributed.Nodes(1, 0, "127.0.0.1", 1234)


# ------------------------------------------------------------- pure building blocks

@pytest.mark.parametrize("world", [2, 4])
def test_rank_shares_make_up_the_single_process_batches(world):
    n, batch = 103, 12
    single = distributed.rank_batches(n, batch, 0, 1, seed=3, epoch=2)
    shares = [distributed.rank_batches(n, batch, r, world, seed=3, epoch=2) for r in range(world)]
    kept = n // world * world  # the sampler drops the tail that does not split evenly
    flat_single = [i for b in single for i in b][:kept]
    union = [sorted(i for r in range(world) for i in shares[r][k]) for k in range(len(shares[0]))]
    expected = [sorted(flat_single[k * batch:(k + 1) * batch]) for k in range(len(union))]
    assert union == expected
    seen = [i for r in range(world) for b in shares[r] for i in b]
    assert len(seen) == len(set(seen)) == kept  # no example twice in an epoch
    assert distributed.rank_batches(n, batch, 0, 1, seed=3, epoch=3) != single  # reshuffled per epoch


@pytest.mark.parametrize("architecture, args", [
    ("mlp", {"hidden": [16, 8]}), ("cnn", {"channels": [4, 8]}), ("mobilenet_v2", {"width_mult": 0.25}),
])
def test_pipeline_layers_reproduce_the_model(architecture, args):
    model = models.build(models.make_spec(architecture, (1, 8, 8), 3, **args)).eval()
    layers = distributed.pipeline_layers(model)
    x = torch.randn(2, 1, 8, 8)
    y = x
    for _, layer in layers:
        y = layer(y)
    torch.testing.assert_close(y, model(x))
    prefixes = [p for p, _ in layers if p is not None]  # every tensor belongs to one layer
    assert all(distributed._owns(prefixes, k) for k in model.state_dict())


def test_balance_cuts_near_equal_runs_where_allowed():
    assert distributed.balance([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert distributed.balance([10, 1, 1, 10], 2) == [(0, 2), (2, 4)]
    assert distributed.balance([1, 1, 1, 9], 2) == [(0, 3), (3, 4)]
    assert distributed.balance([5, 0, 5, 0], 2, cuttable=[3]) == [(0, 3), (3, 4)]
    assert distributed.balance([1, 1, 1, 1, 1, 1], 3) == [(0, 2), (2, 4), (4, 6)]
    with pytest.raises(ModelpressError, match="3 stages at most"):
        distributed.balance([1] * 5, 4, cuttable=[1, 2])


@pytest.mark.parametrize("kwargs, settings, problem", [
    ({"parallelism": "zero"}, {}, "parallelism must be one of"),
    ({"node_rank": 2, "nnodes": 2}, {}, "node_rank 2 must be below nnodes 2"),
    ({"master_port": 0}, {}, "master_port"),
    ({"schedule": "zb"}, {}, "schedule must be one of"),
    ({"nproc_per_node": 3}, {"batch_size": 64}, "must split evenly over the 3 process"),
    ({"parallelism": "pipeline", "microbatches": 3, "nproc_per_node": 2}, {"batch_size": 64},
     "into 3 micro-batches"),
    ({"backend": "nccl", "nproc_per_node": 1}, {"device": "cpu"}, "nccl' needs CUDA"),
])
def test_bad_layouts_are_refused_before_any_process_starts(tmp_path, kwargs, settings, problem):
    with pytest.raises(ModelpressError, match=problem):
        distributed.plan(str(tmp_path), str(tmp_path / "out"), settings=training.TrainSettings(**settings),
                         layout=distributed.Layout(**kwargs), environ={})
    assert not (tmp_path / "out").exists()


def test_plan_counts_processes_over_nodes_and_threads_per_process(tmp_path):
    env = {"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["m:7"], "workerpool1": ["w:7"]},
                                       "task": {"type": "workerpool1", "index": 0}})}
    job = distributed.plan(str(tmp_path), str(tmp_path / "out"), settings=training.TrainSettings(device="cpu"),
                           layout=distributed.Layout(nproc_per_node=2), environ=env)
    assert (job.world_size, job.nodes.node_rank, job.backend) == (4, 1, "gloo")
    assert job.threads == max(1, distributed.cpu_cores() // 2)
    settings = training.TrainSettings(batch_size=8 * distributed.cpu_cores(), device="cpu")
    auto = distributed.plan(str(tmp_path), str(tmp_path / "out"), settings=settings,
                            layout=distributed.Layout(threads_per_process=3), environ={})
    assert (auto.nproc_per_node, auto.threads) == (distributed.cpu_cores(), 3)  # one process per core


# ------------------------------------------------------------ real process groups

def test_ddp_two_processes_end_with_the_weights_of_one(even_dir, tmp_path):
    settings = training.TrainSettings(epochs=2, batch_size=32, learning_rate=3e-3, seed=4, patience=0,
                                      device="cpu")
    args = {"architecture": "mlp", "model_args": {"hidden": [32], "dropout": 0.0}, "settings": settings}
    one = distributed.train(even_dir, str(tmp_path / "one"), layout=layout(nproc_per_node=1), **args, **QUIET)
    two = distributed.train(even_dir, str(tmp_path / "two"), layout=layout(nproc_per_node=2), **args, **QUIET)
    w1, w2 = (load_file(str(tmp_path / run / models.WEIGHTS_FILE)) for run in ("one", "two"))
    _, spec = models.load_model(str(tmp_path / "two"))
    initial = _seeded_model(spec, settings.seed).state_dict()
    assert max((w1[k] - initial[k]).abs().max().item() for k in w1) > 1e-2  # training moved the weights
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
    m = two["metrics"]
    assert m["world_size"] == 2 and m["threads_per_process"] >= 1
    assert m["allreduce_bytes_per_step"] == m["gradient_bytes"] == 4 * m["params"]  # hook saw every gradient
    assert m["ring_bytes_sent_per_rank_per_step"] == m["allreduce_bytes_per_step"]  # 2 (w-1)/w = 1 at w=2
    assert m["step_ms_rank0"] > 0 and m["step_ms_rank1"] > 0 and m["samples_per_s"] > 0
    assert m["training_flops"] == 3 * m["forward_flops_per_example"] * 260 * 2
    assert two["metadata"]["parallelism"] == "ddp"
    assert one["metrics"]["test_loss"] == pytest.approx(m["test_loss"], abs=1e-5)


def test_fsdp_two_processes_end_with_the_weights_of_one_and_hold_half_each(even_dir, tmp_path):
    settings = training.TrainSettings(epochs=1, batch_size=32, learning_rate=3e-3, seed=4, patience=0,
                                      device="cpu")
    args = {"architecture": "mlp", "model_args": {"hidden": [32, 16], "dropout": 0.0}, "settings": settings}
    one = distributed.train(even_dir, str(tmp_path / "one"), layout=layout(nproc_per_node=1), **args, **QUIET)
    two = distributed.train(even_dir, str(tmp_path / "two"), layout=layout(parallelism="fsdp", nproc_per_node=2),
                            **args, **QUIET)
    w1, w2 = (load_file(str(tmp_path / run / models.WEIGHTS_FILE)) for run in ("one", "two"))
    assert set(w1) == set(w2)  # the gathered full state dict: the same keys and shapes as unsharded training
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5  # 8 steps of AdamW
    model, _ = models.load_model(str(tmp_path / "two"))  # the artifact loads (and exports) like any other
    assert two["metadata"]["parallelism"] == "fsdp" and two["metadata"]["mixed_precision"] == "fp32"
    d, f = one["metrics"], two["metrics"]
    assert d["param_bytes_max"] == d["grad_bytes_max"] == 4 * d["params"]  # one process holds it all
    assert d["optimizer_bytes_max"] == 2 * d["param_bytes_max"]  # AdamW: two moments per weight
    # FSDP at world 2: parameters + optimiser state per rank about half of what DDP holds on every rank
    assert f["params_and_optimizer_bytes_max"] <= 0.55 * d["params_and_optimizer_bytes_max"]
    assert f["param_bytes_rank0"] + f["param_bytes_rank1"] == f["full_param_bytes"] == d["param_bytes_max"]
    assert one["metrics"]["test_loss"] == pytest.approx(f["test_loss"], abs=1e-5)


def test_fsdp_bf16_on_the_cpu_is_refused_before_any_process_starts(even_dir, tmp_path):
    with pytest.raises(ModelpressError, match="mixed_precision bf16 needs CUDA GPUs"):
        distributed.plan(even_dir, str(tmp_path / "x"), layout=layout(parallelism="fsdp", mixed_precision="bf16"),
                         settings=training.TrainSettings(device="cpu"))


def _seeded_model(spec, seed):
    torch.manual_seed(seed)
    return models.build(spec)


TWO_NODE_SCRIPT = """
import json, sys
from modelpress.training import distributed
from modelpress import training
result = distributed.train(sys.argv[1], sys.argv[2], architecture="mlp", model_args={"hidden": [16]},
                           settings=training.TrainSettings(epochs=2, batch_size=32, patience=0, device="cpu"),
                           layout=distributed.Layout(nproc_per_node=1, master_port=1), verbose=False)
print("RESULT", json.dumps(None if result is None else result["metrics"]))
"""


def test_two_nodes_from_cluster_spec_only_rank_zero_writes(digits_dir, tmp_path):
    port = free_port()
    cluster = {"workerpool0": [f"127.0.0.1:{port}"], "workerpool1": [f"127.0.0.1:{port}"]}
    procs = []
    for node, task in enumerate([{"type": "workerpool0", "index": 0}, {"type": "workerpool1", "index": 0}]):
        env = {**os.environ, "CLUSTER_SPEC": json.dumps({"cluster": cluster, "task": task})}
        cmd = [sys.executable, "-c", TWO_NODE_SCRIPT, digits_dir, str(tmp_path / f"node{node}")]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.split("RESULT ", 1)[1]) for out, _ in outs]
    assert results[1] is None and not (tmp_path / "node1").exists()
    assert {p.name for p in (tmp_path / "node0").iterdir()} == {models.SPEC_FILE, models.WEIGHTS_FILE}
    assert results[0]["nnodes"] == 2 and results[0]["world_size"] == 2 and results[0]["test_accuracy"] > 0.5


def test_pipeline_two_stages_reach_the_single_process_loss(digits_dir, tmp_path):
    settings = training.TrainSettings(epochs=8, learning_rate=5e-3, seed=0, patience=0, device="cpu")
    args = {"architecture": "cnn", "model_args": {"channels": [8, 16]}, "settings": settings}
    single = training.train(digits_dir, str(tmp_path / "single"), log=lambda _m: None, **args)["metrics"]
    piped = distributed.train(digits_dir, str(tmp_path / "pipe"), layout=layout(
        parallelism="pipeline", nproc_per_node=2, microbatches=4, schedule="1f1b"), **args, **QUIET)
    m = piped["metrics"]
    # Same model and settings; the pipeline drops each epoch's partial batch and shuffles in another
    # order, so it lands near, not on, the single-process result: within 0.06 in loss, 3 points accuracy.
    assert abs(m["best_val_loss"] - single["best_val_loss"]) <= 0.06
    assert abs(m["test_accuracy"] - single["test_accuracy"]) <= 0.03
    assert m["pipeline_stages"] == 2 and m["bubble_fraction"] == pytest.approx(1 / 5)
    assert 0 < m["idle_fraction_rank0"] < 1 and 0 < m["idle_fraction_rank1"] < 1
    # cnn [8, 16] on 8x8 digits, cut after the first conv block + pooling: 8 x 4 x 4 floats per example
    assert m["p2p_bytes_per_step"] == 2 * 64 * 8 * 4 * 4 * 4
    model, _ = models.load_model(str(tmp_path / "pipe"))  # the stages were put back together
    ds = data.load_dataset(digits_dir)
    assert torch_scoring.evaluate(model, ds.test.x, ds.test.y, 10)["accuracy"] == pytest.approx(m["test_accuracy"])


def test_an_error_in_a_worker_surfaces_as_its_message(digits_dir, tmp_path):
    # only the workers read the dataset: its 1167 training examples make no whole batch of 2048
    settings = training.TrainSettings(epochs=1, batch_size=2048, patience=0, device="cpu")
    with pytest.raises(ModelpressError, match=r"^the training split has 1167 examples, fewer than one "
                                              r"batch of 2048; lower batch_size$"):
        distributed.train(digits_dir, str(tmp_path / "m"), architecture="mlp", settings=settings,
                          layout=layout(parallelism="pipeline", nproc_per_node=2), **QUIET)
    assert not (tmp_path / "m").exists()


def _failure(tmp_path, rank, exitcode, error=None):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    path = tmp_path / f"error-{len(list(tmp_path.iterdir()))}.json"  # a file per failure
    if error is not None:
        path.write_text(json.dumps({"message": {"message": error, "extraInfo": {"timestamp": str(rank)}}}))
    return ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(path))


def test_failure_message_prefers_the_workers_modelpress_error(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    both = ChildFailedError("worker", {0: _failure(tmp_path, 0, 1, "RuntimeError: gloo connection reset"),
                                       1: _failure(tmp_path, 1, 1, "ModelpressError: lower batch_size")})
    assert distributed.failure_message(both) == "lower batch_size"
    other = ChildFailedError("worker", {1: _failure(tmp_path, 1, 1, "RuntimeError: CUDA error: out of memory")})
    assert distributed.failure_message(other) == ("distributed training failed in worker rank 1 (exit code 1): "
                                                  "RuntimeError: CUDA error: out of memory. Its traceback is "
                                                  "in the log above.")
    killed = ChildFailedError("worker", {0: _failure(tmp_path, 0, -9)})
    assert "worker rank 0 died (exit code -9, Signal 9 (SIGKILL)" in distributed.failure_message(killed)
    assert "__main__" in distributed.failure_message(killed)
