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
    ({"epochs": 0}, "epochs must be"), ({"learning_rate": -1.0}, "learning_rate"),
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
