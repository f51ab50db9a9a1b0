"""Retraining: a warm start begins from the champion's weights; scoring puts the champion beside it."""

import json

import pytest

from modelpress import data
from modelpress import models
from modelpress.deploy import repository
from modelpress.selection import retraining
from modelpress import training
from modelpress.core.errors import ModelpressError

QUIET = dict(log=lambda s: None)


def test_warm_start_begins_from_the_champions_weights(tmp_path, digits_dir, mlp_dir):
    champion_dir, champion = mlp_dir
    # one epoch at a learning rate too small to learn anything: where training starts decides the result
    tiny = training.TrainSettings(epochs=1, learning_rate=1e-6, seed=0, patience=0)
    warm = retraining.train_challenger(digits_dir, str(tmp_path / "warm"), warm_start=champion_dir,
                                       settings=tiny, **QUIET)
    scratch = retraining.train_challenger(digits_dir, str(tmp_path / "scratch"), architecture="mlp",
                                          model_args={"hidden": [64]}, settings=tiny, **QUIET)
    champion_accuracy = champion["metrics"]["test_accuracy"]
    assert warm["metrics"]["warm_start_accuracy"] == pytest.approx(champion_accuracy)
    assert warm["metrics"]["test_accuracy"] == pytest.approx(champion_accuracy, abs=0.01)
    assert scratch["metrics"]["test_accuracy"] < champion_accuracy - 0.3
    # the champion's architecture is kept, and the artifact is a normal model artifact
    model, spec = models.load_model(str(tmp_path / "warm"))
    assert spec == {**models.read_spec(champion_dir), "info": spec["info"]}
    assert spec["info"]["warm_start"] == champion_dir
    assert warm["metadata"]["warm_start"] == champion_dir and warm["metrics"]["epochs_run"] == 1


def test_warm_start_from_an_incompatible_model_names_the_fix(tmp_path, digits_dir):
    spec = models.make_spec("mlp", (4,), 3, hidden=[8])
    models.save_model(models.build(spec), spec, str(tmp_path / "iris_model"))
    with pytest.raises(ModelpressError, match=r"input shape \[4\] vs the dataset's \[1, 8, 8\].*Train from scratch"):
        retraining.train_challenger(digits_dir, str(tmp_path / "out"), warm_start=str(tmp_path / "iris_model"),
                                    settings=training.TrainSettings(epochs=1), **QUIET)
    assert not (tmp_path / "out").exists()


def test_score_puts_the_latest_champion_beside_the_challenger(tmp_path, digits_dir, mlp_dir, mlp_onnx_dir):
    repo = tmp_path / "repo"
    out = tmp_path / "results.json"
    first = retraining.score(digits_dir, mlp_dir[0], mlp_onnx_dir, str(out), champion_repository=str(repo),
                             window_seconds=0.02, max_windows=2, **QUIET)
    assert [r["role"] for r in first["variants"]] == ["baseline", "candidate"]
    repository.deploy(mlp_onnx_dir, repo, "digits")
    repository.deploy(mlp_onnx_dir, repo, "digits")
    second = retraining.score(digits_dir, mlp_dir[0], mlp_onnx_dir, str(out), champion_repository=str(repo),
                              window_seconds=0.02, max_windows=2, **QUIET)
    rows = {r["role"]: r for r in second["variants"]}
    assert rows["champion"]["name"] == "champion v2"
    # the same model on the same test split scores the same
    assert rows["champion"]["accuracy"] == rows["candidate"]["accuracy"]
    assert json.loads(out.read_text())["variants"][2]["role"] == "champion"
    assert data.load_dataset(digits_dir).test.y.size == second["dataset"]["test_examples"]


def test_warm_start_from_the_deployed_champion(tmp_path, digits_dir, mlp_dir):
    from modelpress.export import onnx_export

    champion_dir, champion = mlp_dir
    repo = tmp_path / "repo"
    tiny = training.TrainSettings(epochs=1, learning_rate=1e-6, seed=0, patience=0)
    # nothing deployed: from scratch, said so
    lines = []
    scratch = retraining.train_challenger(digits_dir, str(tmp_path / "scratch"), warm_start="champion",
                                          champion_repository=str(repo), architecture="mlp",
                                          model_args={"hidden": [64]}, settings=tiny, log=lines.append)
    assert any("training from scratch" in line for line in lines) and "warm_start" not in scratch["metadata"]
    # deployed: the version's meta.json leads back to the torch weights it was exported from
    onnx_export.export_onnx(champion_dir, digits_dir, str(tmp_path / "onnx"), **QUIET)
    repository.deploy(tmp_path / "onnx", repo, "digits")
    warm = retraining.train_challenger(digits_dir, str(tmp_path / "warm"), warm_start="champion",
                                       champion_repository=str(repo), settings=tiny, **QUIET)
    assert warm["metadata"]["warm_start"] == champion_dir
    assert warm["metrics"]["warm_start_accuracy"] == pytest.approx(champion["metrics"]["test_accuracy"])
    # a champion whose weights are gone: a clear error, nothing written
    meta = repo / "digits" / "1" / "meta.json"
    meta.write_text(meta.read_text().replace(champion_dir, str(tmp_path / "gone")))
    with pytest.raises(ModelpressError, match="does not name torch weights that still exist"):
        retraining.train_challenger(digits_dir, str(tmp_path / "out"), warm_start="champion",
                                    champion_repository=str(repo), settings=tiny, **QUIET)
    assert not (tmp_path / "out").exists()
