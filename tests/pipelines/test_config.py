import pytest

from pipelines import config
from modelpress.core.errors import ModelpressError

SIG = {"epochs": ("Integer", 20), "learning_rate": ("Float", 0.002), "source": ("String", "digits"),
       "model_args": ("Dict", {}), "architecture": ("String", "cnn")}


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ModelpressError, match="'epoch' \\(did you mean 'epochs'\\?\\).*Valid keys: architecture, epochs"):
        config.check_parameters({"epoch": 3}, SIG, "training")


def test_types_are_checked_and_ints_accepted_for_floats():
    assert config.check_parameters({"learning_rate": 1}, SIG, "training") == {"learning_rate": 1.0}
    with pytest.raises(ModelpressError, match="'epochs'.*must be Integer"):
        config.check_parameters({"epochs": "ten"}, SIG, "training")
    with pytest.raises(ModelpressError, match="must be Integer"):
        config.check_parameters({"epochs": True}, SIG, "training")


@pytest.mark.parametrize("values, message", [
    ({"epochs": -1}, "epochs must be"), ({"learning_rate": -1.0}, "learning_rate"),
    ({"architecture": "vgg"}, "unknown architecture"),
])
def test_invalid_values_fail_before_running(values, message):
    with pytest.raises(ModelpressError, match=message):
        config.check_parameters(values, SIG, "training")


def test_overrides_parse_yaml_values():
    assert config.parse_overrides(["epochs=3", "model_args={channels: [8, 16]}", "source=a.csv"]) == {
        "epochs": 3, "model_args": {"channels": [8, 16]}, "source": "a.csv"}
    with pytest.raises(ModelpressError, match="key=value"):
        config.parse_overrides(["epochs"])


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ModelpressError, match="not valid YAML"):
        config.load_yaml(str(p))


def test_the_library_never_imports_pipelines():
    """Configuration moved up into pipelines/: the library must not reach back for it."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "modelpress"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{path.relative_to(root.parent)}: {n}" for n in names if n.split(".")[0] in ("pipelines", "components")]
    assert found == []


def test_a_pipeline_and_its_signature_are_built_once_per_pipeline_and_target(monkeypatch):
    from pipelines import registry, settings
    from pipelines.signature import signature
    from pipelines.targets import Target

    built = []
    factory = registry.PIPELINES["training"]
    monkeypatch.setitem(registry.PIPELINES, "training", lambda target: built.append(target) or factory(target))
    target = Target(image="modelpress-cpu:built-once")  # a Target no other test used: nothing cached yet
    cfg = settings.TargetConfig(target=target, pipeline_root="x", parameters={"training": {"epochs": 3}})
    for _ in range(3):
        cfg.pipeline_parameters("training")
        signature("training", target)["epochs"] = ("Integer", 0)  # a copy: the cached one stays
    assert registry.build("training", target) is registry.build("training", target)
    assert built == [target] and signature("training", target)["epochs"] == ("Integer", 20)


def test_built_in_names_are_not_paths():
    from modelpress.data import BUILTIN_SOURCES
    from modelpress.selection.retraining import CHAMPION
    from pipelines import settings

    assert settings.NOT_PATHS == {*BUILTIN_SOURCES, CHAMPION, "none"}  # "none": no ONNX start
    params = settings.load("local").pipeline_parameters("retraining", {"warm_start": CHAMPION,
                                                                       "source": BUILTIN_SOURCES[0]})
    assert (params["warm_start"], params["source"]) == (CHAMPION, BUILTIN_SOURCES[0])


def test_the_edge_objective_and_platform_are_checked_before_running():
    config.validate_values({"objective": "edge", "p95_budget_ms": 2.0, "edge_target_platform": "arm"})
    with pytest.raises(ModelpressError, match="objective 'edge'.*p95_budget_ms"):
        config.validate_values({"objective": "edge"})
    with pytest.raises(ModelpressError, match="edge_target_platform must be one of"):
        config.validate_values({"edge_target_platform": "x86"})
