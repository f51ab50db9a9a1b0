"""distributed_train through `.python_func`, as the executor calls it, with 2 real processes."""

import json
import socket
from pathlib import Path

import pytest
from kfp.dsl import ClassificationMetrics, Dataset, Metrics, Model

from components.distributed_train import distributed_train
from components.export_onnx import export_onnx
from modelpress.core.errors import ModelpressError


def _art(cls, path):
    return cls(name=Path(path).name, uri=str(path), metadata={})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outputs(root):
    return dict(model=_art(Model, root / "model"), metrics=_art(Metrics, root / "metrics"),
                classification=_art(ClassificationMetrics, root / "classification"))


def test_two_process_ddp_component_feeds_export_onnx(digits_dir, tmp_path):
    ds, out = _art(Dataset, digits_dir), _outputs(tmp_path)
    distributed_train.python_func(
        dataset=ds, **out, architecture="cnn", model_args={"channels": [8.0, 16.0]}, epochs=3,
        batch_size=64, learning_rate=5e-3, optimizer="adamw", weight_decay=1e-4, seed=0, patience=2,
        device="auto", parallelism="ddp", nproc_per_node=2, nnodes=1, node_rank=0, master_addr="127.0.0.1",
        master_port=_free_port(), backend="auto", microbatches=4, schedule="gpipe")
    model, metrics, cls = out["model"], out["metrics"], out["classification"]
    assert model.metadata["architecture"] == "cnn" and model.metadata["parallelism"] == "ddp"
    assert model.metadata["world_size"] == 2 and 0.5 < model.metadata["accuracy"] <= 1.0
    for key in ("test_accuracy", "samples_per_s", "train_samples_per_s", "step_ms_rank0", "step_ms_rank1",
                "allreduce_bytes_per_step", "training_flops", "achieved_flops_per_s", "work_seconds"):
        assert key in metrics.metadata, key
    assert json.loads(Path(metrics.path).read_text())["world_size"] == 2
    assert sum(sum(r["row"]) for r in cls.metadata["confusionMatrix"]["rows"]) == 360
    # the artifact is the one train writes: export-onnx takes it unchanged
    onnx_model, onnx_metrics = _art(Model, tmp_path / "onnx"), _art(Metrics, tmp_path / "onnx_metrics")
    export_onnx.python_func(model=model, dataset=ds, onnx_model=onnx_model, metrics=onnx_metrics,
                            opset=18, rtol=1e-3, atol=1e-4)
    assert onnx_metrics.metadata["test_accuracy"] == pytest.approx(metrics.metadata["test_accuracy"], abs=0.003)


def test_component_refuses_an_unknown_parallelism_before_launching(digits_dir, tmp_path):
    out = _outputs(tmp_path)
    with pytest.raises(ModelpressError, match="parallelism must be one of"):
        distributed_train.python_func(
            dataset=_art(Dataset, digits_dir), **out, architecture="cnn", model_args={}, epochs=1,
            batch_size=64, learning_rate=1e-3, optimizer="adamw", weight_decay=0.0, seed=0, patience=0,
            device="auto", parallelism="zero3", nproc_per_node=2, nnodes=1, node_rank=0,
            master_addr="127.0.0.1", master_port=_free_port(), backend="auto", microbatches=4,
            schedule="gpipe")
    assert not (tmp_path / "model").exists() and not (tmp_path / "metrics").exists()


@pytest.mark.filterwarnings("ignore:.*non-Python base image")  # the image is for Vertex; this runs in .venv
def test_runs_in_a_kfp_local_pipeline(tmp_path):
    """The launcher spawns its workers from inside the KFP executor process (kfp.local, no Docker)."""
    from kfp import dsl, local

    from components.dataset import make_dataset

    @dsl.pipeline(name="distributed-check")
    def check(port: int):
        dataset = make_dataset(source="digits").outputs["dataset"]
        distributed_train(dataset=dataset, architecture="mlp", model_args={"hidden": [32]}, epochs=2,
                          nproc_per_node=2, master_port=port, parallelism="pipeline", schedule="1f1b",
                          microbatches=2)

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    check(port=_free_port())
    task_dir = next((tmp_path / "runs").glob("distributed-check-*/distributed-train"))
    assert {p.name for p in (task_dir / "model").iterdir()} == {"spec.json", "weights.safetensors"}
    outputs = json.loads(next(task_dir.glob("**/executor_output.json")).read_text())["artifacts"]
    model = outputs["model"]["artifacts"][0]["metadata"]
    metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert model["parallelism"] == "pipeline" and model["pipeline_schedule"] == "1f1b"
    assert metrics["bubble_fraction"] == pytest.approx(1 / 3)  # 2 stages, 2 micro-batches


@pytest.mark.filterwarnings("ignore:.*non-Python base image")
def test_engine_ray_with_fsdp_runs_in_a_kfp_local_pipeline(tmp_path):
    """Ray Train as the engine, FSDP2 as the worker, inside the KFP executor process: a local Ray on
    127.0.0.1 started by the step and shut down after."""
    pytest.importorskip("ray.train.torch", reason='Ray Train is not installed: pip install "modelpress[ray]"')
    from kfp import dsl, local

    from components.dataset import make_dataset

    @dsl.pipeline(name="ray-check")
    def check():
        dataset = make_dataset(source="digits").outputs["dataset"]
        distributed_train(dataset=dataset, architecture="mlp", model_args={"hidden": [32]}, epochs=1,
                          nproc_per_node=2, engine="ray", parallelism="fsdp", batch_size=64)

    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    check()
    task_dir = next((tmp_path / "runs").glob("ray-check-*/distributed-train"))
    assert {p.name for p in (task_dir / "model").iterdir()} == {"spec.json", "weights.safetensors"}
    outputs = json.loads(next(task_dir.glob("**/executor_output.json")).read_text())["artifacts"]
    model = outputs["model"]["artifacts"][0]["metadata"]
    metrics = outputs["metrics"]["artifacts"][0]["metadata"]
    assert model["parallelism"] == "fsdp" and model["world_size"] == 2
    assert metrics["params_and_optimizer_bytes_max"] <= 0.55 * 3 * metrics["full_param_bytes"]


def test_a_node_without_rank_zero_leaves_before_the_executor_writes_outputs(digits_dir, tmp_path, monkeypatch):
    from modelpress.training import distributed
    from components import _io

    recorded = []
    monkeypatch.setattr(distributed, "train", lambda *a, **k: None)  # what every node but rank 0's gets
    monkeypatch.setattr(_io, "record", lambda *a, **k: recorded.append(a))
    with pytest.raises(SystemExit) as exit_:
        distributed_train.python_func(
            dataset=_art(Dataset, digits_dir), **_outputs(tmp_path), architecture="cnn", model_args={}, epochs=1,
            batch_size=64, learning_rate=1e-3, optimizer="adamw", weight_decay=0.0, seed=0, patience=0,
            device="auto", parallelism="ddp", nproc_per_node=1, nnodes=2, node_rank=1,
            master_addr="127.0.0.1", master_port=_free_port(), backend="auto", microbatches=4, schedule="gpipe")
    assert exit_.value.code == 0 and recorded == []
