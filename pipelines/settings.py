"""Per-target settings from configs/<target>.yaml: image, pipeline root, parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelpress.config import check_keys, check_parameters, load_yaml
from modelpress.errors import ModelpressError
from pipelines.registry import PIPELINES
from pipelines.signature import signature
from pipelines.targets import Target

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
TOP_LEVEL_KEYS = {
    "local": {"image", "pipeline_root", "parameters"},
    "vertex": {"image", "pipeline_root", "parameters", "project", "region", "service_account",
               "labels", "enable_caching"},
}


LOCAL_PATH_PARAMETERS = {"repository", "source"}


@dataclass
class TargetConfig:
    target: Target
    pipeline_root: str
    parameters: dict = field(default_factory=dict)  # {pipeline: {name: value}}
    raw: dict = field(default_factory=dict)

    def pipeline_parameters(self, name: str, overrides: dict | None = None) -> dict:
        pipeline = PIPELINES[name](self.target)
        sig = signature(pipeline)
        values = check_parameters({**self.parameters.get(name, {}), **(overrides or {})}, sig, name)
        if self.target.name == "local":
            # Relative paths mean "from where you run the command"; steps get absolute ones.
            for key in LOCAL_PATH_PARAMETERS & set(sig):
                value = values.get(key, sig[key][1])
                if value and not str(value).startswith("gs://") and value != "digits" \
                        and not Path(value).is_absolute():
                    values[key] = str(Path(value).resolve())
        return values


def load(target_name: str, path: str | Path | None = None) -> TargetConfig:
    path = Path(path) if path else CONFIG_DIR / f"{target_name}.yaml"
    data = load_yaml(str(path))
    check_keys(data, TOP_LEVEL_KEYS[target_name], str(path))
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ModelpressError(f"{path}: 'parameters' maps pipeline names to their parameters")
    check_keys(params, list(PIPELINES), f"{path} 'parameters'")
    target = Target(name=target_name, image=data.get("image", Target.image))
    root = data.get("pipeline_root", "local_outputs")
    if target_name == "local":
        root = str(Path(root).resolve())  # relative to where the command runs
    cfg = TargetConfig(target=target, pipeline_root=root, parameters=params, raw=data)
    for name in params:  # fail on a misspelt key before anything runs
        cfg.pipeline_parameters(name)
    return cfg
