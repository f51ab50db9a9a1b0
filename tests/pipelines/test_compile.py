"""Every pipeline compiles for every target; every config validates."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelpress.core.errors import ModelpressError
from pipelines import settings
from pipelines.compile import compile_all
from pipelines.registry import PIPELINES
from pipelines.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    return out, compile_all(TARGETS, out)


def test_every_pipeline_and_target_compiles_and_loads_back(compiled):
    from kfp import components

    out, written = compiled
    assert {(p.parent.name, p.stem) for p in written} == {(t, n) for t in TARGETS for n in PIPELINES}
    for path in written:
        spec = yaml.safe_load(path.read_text())
        kfp_name = path.stem.replace("_", "-")  # KFP writes batch_prediction as batch-prediction
        assert spec["pipelineInfo"]["name"] == kfp_name
        loaded = components.load_component_from_file(str(path))
        assert loaded.name == kfp_name


def test_images_and_resources_follow_the_target(compiled):
    out, _ = compiled
    for target in TARGETS:
        image = settings.load(target).target.image
        # optimise: every step a project component (vertex training runs a custom job: test_vertex.py)
        text = (out / target / "optimise.yaml").read_text()
        executors = yaml.safe_load(text)["deploymentSpec"]["executors"].values()
        images = {e["container"]["image"] for e in executors if "container" in e}
        assert images == {image}
        # the ONNX start: brought in by an importer from the onnx_model parameter
        (importer,) = [e["importer"] for e in executors if "importer" in e]
        assert importer["artifactUri"] == {"runtimeParameter": "uri"}
    assert "resourceCpuLimit" in (out / "vertex" / "training.yaml").read_text()
    assert "resourceCpuLimit" not in (out / "local" / "training.yaml").read_text()


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_validates(config):
    if config.stem in TARGETS:
        cfg = settings.load(config.stem, config)
        for name in cfg.parameters:
            cfg.pipeline_parameters(name)


def test_misspelt_config_key_names_valid_keys(tmp_path):
    bad = tmp_path / "local.yaml"
    bad.write_text("parameters:\n  training:\n    epocs: 3\n")
    with pytest.raises(ModelpressError, match="'epocs' \\(did you mean 'epochs'\\?\\).*Valid keys:"):
        settings.load("local", bad)
    bad.write_text("pipline_root: x\n")
    with pytest.raises(ModelpressError, match="pipline_root"):
        settings.load("local", bad)


def test_compile_cli_prints_what_it_wrote(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "compile.py"), "--target", "local",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, check=True)
    for name in PIPELINES:
        assert f"wrote {tmp_path / 'local' / (name + '.yaml')}" in proc.stdout
