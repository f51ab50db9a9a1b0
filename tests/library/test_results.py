"""The result types render exactly the dictionaries artifacts, meta.json and results JSON held before."""

import json

import pytest

from modelpress.core.errors import ModelpressError
from modelpress.core.results import ModelCard, Role, StepResult, Variant
from modelpress.deploy import repository
from modelpress.selection import comparison, retraining

QUIET = dict(log=lambda s: None)


def test_a_torch_card_renders_the_common_keys_and_its_extras():
    card = ModelCard(framework="pytorch", accuracy=0.9, class_names=["a", "b"], architecture="mlp", params=10,
                     flops=84, input_shape=[4], extra={"sparsity": 0.5})
    assert card.metadata() == {"framework": "pytorch", "architecture": "mlp", "params": 10, "macs": 42,
                               "flops": 84, "accuracy": 0.9, "precision": "fp32", "input_shape": [4],
                               "class_names": ["a", "b"], "sparsity": 0.5}
    # unknown figures are left out, but an unscored model says so
    bare = ModelCard(framework="onnx", accuracy=None, class_names=["a"]).metadata()
    assert bare == {"framework": "onnx", "accuracy": None, "precision": "fp32", "class_names": ["a"]}


def test_detail_goes_to_meta_json_only_and_a_card_reads_back():
    card = ModelCard(framework="onnx", accuracy=0.8, class_names=["a"], params=3, flops=6,
                     extra={"opset": 18, "size_bytes": 100}, detail={"versions": {"onnx": "1"}})
    assert "versions" not in card.metadata() and card.file_metadata()["versions"] == {"onnx": "1"}
    back = ModelCard.from_metadata(json.loads(json.dumps(card.file_metadata())))
    assert back == card
    changed = back.evolve(drop=("size_bytes",), precision="int8", extra={"quantisation": {"method": "x"}})
    assert changed.metadata()["precision"] == "int8" and "size_bytes" not in changed.metadata()
    assert changed.metadata()["opset"] == 18 and changed.detail == card.detail


def test_step_result_as_dict():
    card = ModelCard(framework="pytorch", accuracy=1.0, class_names=["a", "b"])
    out = StepResult(card, {"test_accuracy": 1.0}, confusion_matrix=[[1, 0], [0, 1]],
                     extra={"history": []}).as_dict()
    assert out == {"metadata": card.metadata(), "metrics": {"test_accuracy": 1.0},
                   "confusion_matrix": {"class_names": ["a", "b"], "matrix": [[1, 0], [0, 1]]}, "history": []}
    assert StepResult(metadata={"variants": ["x"]}).as_dict() == {"metadata": {"variants": ["x"]}, "metrics": {}}
    with pytest.raises(ModelpressError, match="needs a model card"):
        StepResult(confusion_matrix=[[1]]).as_dict()


def test_roles_are_the_stored_strings():
    assert Role.BASELINE_ONNX == "baseline-onnx" and f"{Role.CHAMPION}" == "champion"
    assert json.dumps({"role": Role.CANDIDATE}) == '{"role": "candidate"}'
    assert {"baseline": 0}[Role.BASELINE] == 0  # rows read back from JSON are found by member
    assert Variant.of({"name": "x", "path": "p", "kind": "onnx", "role": "baseline-onnx"}).role is Role.BASELINE_ONNX
    assert Variant("x", "p", "onnx").as_dict() == {"name": "x", "path": "p", "kind": "onnx", "role": "candidate"}
    with pytest.raises(ModelpressError, match="role must be one of"):
        Variant("x", "p", "onnx", role="referee")
    with pytest.raises(ModelpressError, match="kind must be one of"):
        Variant("x", "p", "tflite")


def test_optimisation_variants_are_named_by_method():
    q = [("q1", {"quantisation": {"method": "static-int8"}})]
    names = [(v.name, v.role) for v in comparison.optimisation_variants("t", "o", "p", "s", q, q, [("q3", {})])]
    assert names == [("torch eager fp32", "baseline"), ("onnx fp32", "baseline-onnx"), ("pruned fp32", "candidate"),
                     ("student fp32", "candidate"), ("static-int8", "candidate"), ("pruned static-int8", "candidate"),
                     ("student quantised", "candidate")]


def test_with_champion_adds_the_latest_deployed_version(tmp_path, mlp_onnx_dir):
    base = [Variant("x", "p", "onnx")]
    lines = []
    assert comparison.with_champion(base, str(tmp_path / "repo"), "digits", log=lines.append) == base
    assert lines == [f"[benchmark] no champion 'digits' in {tmp_path / 'repo'}: the accuracy floor alone decides"]
    assert comparison.with_champion(base, "", "digits", **QUIET) == base
    repository.deploy(mlp_onnx_dir, tmp_path / "repo", "digits")
    repository.deploy(mlp_onnx_dir, tmp_path / "repo", "digits")
    *_, champion = comparison.with_champion(base, str(tmp_path / "repo"), "digits", **QUIET)
    assert (champion.name, champion.role, champion.path) == ("champion v2", Role.CHAMPION,
                                                             str(tmp_path / "repo" / "digits" / "2"))


def test_the_score_summary_names_the_challenger_and_the_champion():
    results = {"work_seconds": 1.5, "variants": [{"name": "t", "role": "baseline", "accuracy": 0.9},
                                                 {"name": "o", "role": "candidate", "accuracy": 0.91},
                                                 {"name": "champion v1", "role": "champion", "accuracy": 0.8}]}
    assert retraining.summary(results) == {"metadata": {"variants": ["t", "o", "champion v1"]},
                                           "metrics": {"work_seconds": 1.5, "challenger_accuracy": 0.91,
                                                       "champion_accuracy": 0.8}}
    results["variants"].pop()
    assert "champion_accuracy" not in retraining.summary(results)["metrics"]
