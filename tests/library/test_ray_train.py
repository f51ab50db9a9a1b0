"""Ray Train as the second distributed engine: the DDP worker in Ray actors, on a local Ray (gloo, CPU)."""

import sys

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("ray.train.torch", reason='Ray Train is not installed: pip install "modelpress[ray]"')

from modelpress import data, models, training  # noqa: E402
from modelpress.core.errors import ModelpressError  # noqa: E402
from modelpress.evaluation import torch_scoring  # noqa: E402
from modelpress.training import distributed  # noqa: E402
from modelpress.training.distributed import ray_engine  # noqa: E402

from tests.library.test_distributed import QUIET, even_dir, layout  # noqa: E402,F401 (even_dir: a fixture)

SETTINGS = training.TrainSettings(epochs=2, batch_size=32, learning_rate=3e-3, seed=4, patience=0, device="cpu")
MLP = {"architecture": "mlp", "model_args": {"hidden": [32], "dropout": 0.0}}


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (starting one takes seconds); train_with_ray uses it and leaves it."""
    with ray_engine.local_ray(2):
        yield


def ray_job(dataset_dir, out_dir, workers=2, **kwargs):
    return distributed.plan(dataset_dir, out_dir, settings=SETTINGS, verbose=False, environ={},
                            layout=distributed.Layout(nproc_per_node=workers, threads_per_process=1),
                            **{**MLP, **kwargs})


def test_two_ray_workers_end_with_the_weights_of_one_process(ray_session, even_dir, tmp_path):
    one = distributed.train(even_dir, str(tmp_path / "one"), layout=layout(nproc_per_node=1), settings=SETTINGS,
                            **MLP, **QUIET)
    two = ray_engine.train_with_ray(ray_job(even_dir, str(tmp_path / "two")), storage_dir=str(tmp_path / "ray"),
                                    log=QUIET["log"])
    w1, w2 = (load_file(str(tmp_path / run / models.WEIGHTS_FILE)) for run in ("one", "two"))
    torch.manual_seed(SETTINGS.seed)
    initial = models.build(models.load_model(str(tmp_path / "two"))[1]).state_dict()
    assert max((w1[k] - initial[k]).abs().max().item() for k in w1) > 1e-2  # training moved the weights
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
    # the result comes back as torchrun's does: the same metrics (per-rank ones for 2 ranks) and metadata
    m = two["metrics"]
    assert m["world_size"] == 2 and m["threads_per_process"] == 1 and m["work_seconds"] > 0
    assert m["step_ms_rank0"] > 0 and m["step_ms_rank1"] > 0
    assert m["allreduce_bytes_per_step"] == m["gradient_bytes"] == 4 * m["params"]
    assert {k for k in m if not k.endswith("_rank1")} == set(one["metrics"])
    assert two["metadata"] == {**one["metadata"], "world_size": 2, "accuracy": m["test_accuracy"]}
    assert m["test_loss"] == pytest.approx(one["metrics"]["test_loss"], abs=1e-5)
    assert (tmp_path / "ray" / ray_engine.RUN_NAME).is_dir()  # Ray Train's run folder, not beside the model


# slow: the kfp.local Ray test (tests/components) checks the artifact rank 0 writes
@pytest.mark.slow
def test_rank_zero_writes_the_artifact_once_and_it_loads(ray_session, digits_dir, tmp_path):
    out = tmp_path / "model"
    result = ray_engine.train_with_ray(ray_job(digits_dir, str(out)), log=QUIET["log"])
    assert sorted(p.name for p in out.iterdir()) == sorted([models.SPEC_FILE, models.WEIGHTS_FILE])
    model, spec = models.load_model(str(out))
    assert spec["architecture"] == "mlp"
    ds = data.load_dataset(digits_dir)
    scored = torch_scoring.evaluate(model, ds.test.x, ds.test.y, 10)
    assert scored["accuracy"] == pytest.approx(result["metrics"]["test_accuracy"])
    assert result["metadata"]["parallelism"] == "ddp" and result["metrics"]["test_accuracy"] > 0.5


def test_a_workers_error_surfaces_as_its_message(ray_session, digits_dir, tmp_path):
    # plan does not build the model: every worker fails in ddp.run with the registry's ModelpressError
    job = ray_job(digits_dir, str(tmp_path / "m"), architecture="nonesuch")
    with pytest.raises(ModelpressError, match=r"^architecture: unknown architecture 'nonesuch'; choose one of"):
        ray_engine.train_with_ray(job, log=QUIET["log"])
    assert not (tmp_path / "m").exists()


def test_failure_message_prefers_the_workers_modelpress_error():
    from ray.train import ControllerError, WorkerGroupError

    both = WorkerGroupError("2 workers failed", {0: RuntimeError("gloo connection reset\nmore"),
                                                 1: ModelpressError("lower batch_size")})
    assert ray_engine.ray_failure_message(both) == "lower batch_size"
    other = WorkerGroupError("1 worker failed", {1: RuntimeError("CUDA error: out of memory\ntraceback")})
    assert ray_engine.ray_failure_message(other) == (
        "distributed training failed in Ray worker rank 1: RuntimeError: CUDA error: out of memory. "
        "Its traceback is in the log above (or in the Ray session's worker logs).")
    controller = ControllerError(ValueError("no GPU in the cluster"))
    assert ray_engine.ray_failure_message(controller) == ("Ray Train failed before or around the workers: "
                                                          "ValueError: no GPU in the cluster")


def test_a_missing_ray_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ModelpressError, match=r'pip install "modelpress\[ray\]"'):
        ray_engine.import_ray()


@pytest.mark.parametrize("requested, problem", [
    ({"CPU": -1}, "amounts >= 0"), ({"CPU": True}, "amounts >= 0"), ({"GPU": 1}, "asks for GPUs"),
])
def test_bad_worker_resources_are_refused(requested, problem):
    with pytest.raises(ModelpressError, match=problem):
        ray_engine._resources(requested, use_gpu=False)
    assert ray_engine._resources(None, use_gpu=True) == {"CPU": 1, "GPU": 1}


# slow: another Ray run; test_ray_job_stages_the_dataset... checks the entrypoint's staging fast
@pytest.mark.slow
def test_the_vertex_ray_job_entrypoint_trains_and_writes_the_model_and_result(ray_session, even_dir, tmp_path):
    """What the ray-train step submits to a Ray on Vertex cluster, run here with local paths."""
    import json

    from modelpress.deploy.vertex import ray_job

    args = {"dataset": even_dir, "model": str(tmp_path / "model"), "result": str(tmp_path / "result"),
            "settings": {"epochs": 1, "batch_size": 32, "seed": 4, "patience": 0, "device": "cpu"},
            "layout": {"parallelism": "ddp", "threads_per_process": 1}, "scaling": {"num_workers": 2},
            **MLP}
    result = ray_job.run(args, log=lambda _m: None)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["spec.json", "weights.safetensors"]
    written = json.loads((tmp_path / "result" / "result.json").read_text())
    assert written["metrics"]["world_size"] == 2 and written["metrics"] == json.loads(json.dumps(result["metrics"]))


def test_ray_job_stages_the_dataset_per_node_and_publishes_rank_zeros_model(tmp_path, monkeypatch, even_dir):
    import shutil
    from dataclasses import replace

    from modelpress.deploy.vertex import ray_job, storage

    calls = []
    monkeypatch.setattr(ray_job, "NODE_CACHE", tmp_path / "node")
    monkeypatch.setattr(storage, "download_prefix",
                        lambda uri, dest: calls.append(("down", uri)) or shutil.copytree(even_dir, dest,
                                                                                        dirs_exist_ok=True))
    monkeypatch.setattr(storage, "upload_dir", lambda src, uri: calls.append(("up", uri, sorted(
        p.name for p in src.iterdir()))))
    job = ray_job_fixture(even_dir, tmp_path)
    staged = ray_job.stage_dataset(job, dataset_uri="gs://b/run/dataset")
    again = ray_job.stage_dataset(replace(job), dataset_uri="gs://b/run/dataset")  # a second worker, same node
    assert staged.dataset_dir == again.dataset_dir and (tmp_path / "node" / "dataset").is_dir()
    assert calls == [("down", "gs://b/run/dataset")] and job.dataset_dir == even_dir  # the job itself unchanged
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "spec.json").write_text("{}")
    ray_job.publish_model("gs://b/run/model", str(tmp_path / "out"))
    assert calls[-1] == ("up", "gs://b/run/model", ["spec.json"])


def ray_job_fixture(dataset_dir, tmp_path):
    return distributed.plan(dataset_dir, str(tmp_path / "m"), settings=SETTINGS, verbose=False, environ={},
                            layout=distributed.Layout(nproc_per_node=1), **MLP)
