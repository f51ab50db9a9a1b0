"""The README's "Optimise your own model" configs are complete: each loads as a local config and
passes every check a run makes before it starts (with stand-ins for the user's files)."""

import re
from pathlib import Path

import pytest
import torch
import yaml

from modelpress.core.errors import ModelpressError
from pipelines import settings

ROOT = Path(__file__).resolve().parents[2]


def _configs() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Optimise your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```yaml\n(.*?)```", section, re.S)


def test_the_three_ways_in_are_documented():
    bodies = [yaml.safe_load(b)["parameters"]["optimise"] for b in _configs()]
    assert len(bodies) == 3
    assert bodies[0]["architecture"].startswith("torchvision:") and bodies[0]["epochs"] == 0
    assert ":" in bodies[1]["architecture"] and "code_dir" in bodies[1]
    assert bodies[2]["onnx_model"].endswith(".onnx")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_config_passes_the_checks_a_run_makes(tmp_path, monkeypatch, index):
    body = _configs()[index]
    values = yaml.safe_load(body)["parameters"]["optimise"]
    monkeypatch.chdir(tmp_path)
    # stand-ins for what the user brings: their data, code, weights and ONNX file
    if values.get("source", "").endswith("/"):
        (tmp_path / values["source"]).mkdir(parents=True)
    if "code_dir" in values:
        code = Path(values["code_dir"])
        body = body.replace(str(code), str(tmp_path / "src"))
        pkg = tmp_path / "src" / "acme_models"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "nets.py").write_text("from torch import nn\n\nclass SmallNet(nn.Sequential):\n"
                                     "    def __init__(self, num_classes, width=16):\n"
                                     "        super().__init__(nn.Flatten(), nn.LazyLinear(width), nn.ReLU(),"
                                     " nn.Linear(width, num_classes))\n")
        body = body.replace(values["weights"], str(tmp_path / "smallnet.pth"))
        torch.save({}, tmp_path / "smallnet.pth")
    for key in ("weights", "onnx_model"):
        if key in values and "code_dir" not in values:
            (tmp_path / values[key]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / values[key]).write_bytes(b"stand-in")
    config = tmp_path / "mine.yaml"
    config.write_text(body)
    cfg = settings.load("local", config)  # loading checks every parameter
    params = cfg.pipeline_parameters("optimise")
    for key in ("weights", "onnx_model", "code_dir"):
        if key in values:
            assert Path(params[key]).is_absolute()  # steps get absolute paths


def test_a_recipe_with_a_misspelt_step_is_refused_before_anything_runs(tmp_path):
    cfg = settings.load("local")
    with pytest.raises(ModelpressError, match=r"'qantise' is not a compression step \(did you mean 'quantise'\?\)"):
        cfg.pipeline_parameters("optimise", {"steps": ["prune", "qantise"]})


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, "epochs 0 takes your trained model as it is: set weights"),
    ({"replace_head": True}, "set weights to your checkpoint"),
    ({"onnx_model": "gs://b/m.onnx", "steps": ["prune", "quantise"]}, r"steps \['prune'\] need a torch model"),
    ({"normalise": "imagenett"}, "unknown normalise .imagenett.; normalise must be .dataset."),
    ({"task": "regresion"}, "task must be one of auto, classification, regression"),
])
def test_starting_points_that_do_not_fit_are_refused(overrides, message):
    with pytest.raises(ModelpressError, match=message):
        settings.load("local").pipeline_parameters("optimise", overrides)


def test_pipelines_that_train_refuse_epochs_0_and_vertex_refuses_a_code_dir():
    for pipeline in ("training", "retraining"):
        with pytest.raises(ModelpressError, match="epochs 0 .* is a start of the optimise pipeline"):
            settings.load("local").pipeline_parameters(pipeline, {"epochs": 0})
    with pytest.raises(ModelpressError, match="code is in the image: put its package in user_code/"):
        settings.load("vertex").pipeline_parameters("optimise", {"code_dir": "gs://b/code"})


def test_an_absolute_tolerance_above_1_needs_task_regression(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "houses.csv").write_text("a,price\n1,2.5\n")
    cfg = settings.load("local")
    with pytest.raises(ModelpressError, match="set task: regression"):
        cfg.pipeline_parameters("optimise", {"source": "houses.csv", "tolerance": 2.0})
    cfg.pipeline_parameters("optimise", {"source": "houses.csv", "tolerance": 2.0, "task": "regression"})


def test_the_readme_text_config_and_configs_text_yaml_pass_the_checks(tmp_path, monkeypatch):
    """docs/text.md's hf: config (with stand-ins for the user's CSV and save_pretrained folder) and the
    shipped configs/text.yaml load as local configs; the folder's own tokenizer becomes the
    dataset's, and both paths reach the steps absolute."""
    import json

    (body,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "text.md").read_text(), re.S)
    values = yaml.safe_load(body)["parameters"]["optimise"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / values["source"]).write_text("body,queue\nprinter jammed,it\n")
    folder = tmp_path / values["architecture"][len("hf:"):]
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "distilbert"}))
    from safetensors.torch import save_file

    save_file({"stand_in": torch.zeros(1)}, str(folder / "model.safetensors"))  # a readable header
    (folder / "tokenizer.json").write_text("{}")
    (tmp_path / "mine.yaml").write_text(body)
    params = settings.load("local", tmp_path / "mine.yaml").pipeline_parameters("optimise")
    assert params["architecture"] == f"hf:{folder}" and params["tokenizer"] == str(folder)
    (tmp_path / "reviews.csv").write_text("text,label\ngreat,positive\n")
    shipped = settings.load("local", ROOT / "configs" / "text.yaml").pipeline_parameters("optimise")
    assert shipped["text_column"] == "text" and shipped["student_architecture"] == "from-teacher"
    assert shipped["quantisation_methods"] == ["fused", "dynamic-int8", "static-int8"]


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, "epochs 0 takes a trained model as it is: set architecture: hf:<folder>"),
    ({"weights": "w.pth"}, "weights is for image and table models"),
    ({"task": "regression"}, "task regression does not apply to text datasets"),
    ({"onnx_model": "m.onnx"}, "an ONNX file start\\) takes image and table datasets"),
    ({"quantisation_methods": ["fused", "int4"]}, "'int4' is not a quantisation method"),
    ({"model_args": {"layers": 2, "hidden": 30, "heads": 4}}, "hidden \\(30\\) must be a multiple of heads \\(4\\)"),
    ({"model_args": {"channels": [8]}}, "\\['channels'\\] do not fit architecture 'bert'"),
    ({"code_dir": "src"}, "code_dir is for your package.module:callable"),
    ({"model_args": {"max_position": 64}, "max_length": 128}, "max_position 64 is below max_length 128"),
])
def test_text_runs_that_cannot_work_are_refused(overrides, message):
    text = {"text_column": "text", "architecture": "bert", "model_args": {"layers": 1},
            "student_architecture": "from-teacher", "student_args": {}}
    with pytest.raises(ModelpressError, match=message):
        settings.load("local").pipeline_parameters("optimise", {**text, **overrides})


def test_an_hf_folder_without_its_tokenizer_and_text_training_on_vertex_are_refused(tmp_path, monkeypatch):
    import json

    from modelpress.models import text

    monkeypatch.chdir(tmp_path)
    text.bert_from_config(50, 2, layers=1, hidden=16, heads=2, intermediate=32, max_position=64).save_pretrained(
        tmp_path / "bare", safe_serialization=True)  # weights and config, no tokenizer beside them
    (tmp_path / "t.csv").write_text("text,label\ngreat,positive\n")
    values = {"source": "t.csv", "text_column": "text", "architecture": "hf:bare", "model_args": {},
              "max_length": 64, "student_architecture": "from-teacher", "student_args": {}}
    with pytest.raises(ModelpressError, match="hf:bare: tokenizer folder .* has no vocabulary.*set tokenizer to"):
        settings.load("local").pipeline_parameters("optimise", values)
    with pytest.raises(ModelpressError, match="is more tokens than hf:.* has position embeddings for"):
        settings.load("local").pipeline_parameters("optimise", {**values, "max_length": 128})
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["max_position_embeddings"] == 64
    with pytest.raises(ModelpressError, match="training pipeline on Vertex AI .* does not train text models"):
        settings.load("vertex").pipeline_parameters("training", {"source": "gs://b/t.csv", "text_column": "text",
                                                                  "architecture": "bert", "model_args": {}})


def test_retraining_a_text_model_from_the_champion_is_refused_before_it_runs():
    with pytest.raises(ModelpressError, match="warm_start is for image and table models"):
        settings.load("local").pipeline_parameters("retraining", {"text_column": "text", "architecture": "bert",
                                                                   "model_args": {}, "warm_start": "champion"})


def test_text_models_need_text_column_and_fused_is_for_text():
    cfg = settings.load("local")
    with pytest.raises(ModelpressError, match="is a text model: set text_column"):
        cfg.pipeline_parameters("optimise", {"architecture": "bert", "model_args": {}})
    with pytest.raises(ModelpressError, match="fused is for text models: set text_column"):
        cfg.pipeline_parameters("optimise", {"quantisation_methods": ["fused"]})
