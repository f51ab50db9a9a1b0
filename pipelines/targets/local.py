"""local: every step is a lightweight component that kfp.local runs in this virtual environment
(or in the CPU image with --runner docker); the deploy step writes the next version of a local
Triton-layout model repository."""

from __future__ import annotations

from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.data import BUILTIN_SOURCES
from pipelines.targets import Target

CONFIG_KEYS = {"image", "pipeline_root", "parameters"}


def from_config(data: dict, path: Path, image_tag: str | None = None) -> dict:
    """The TargetConfig fields configs/local.yaml describes (no image tag: local images are not pushed)."""
    root = data.get("pipeline_root", "local_outputs")
    return dict(target=Target(name="local", image=data.get("image", Target.image)),
                pipeline_root=str(Path(root).resolve()))  # relative to where the command runs


def configure(target: Target, task):
    return task  # resource limits would only make the local runner warn


def path_parameter(key: str, value: str, *, must_exist: bool) -> str:
    """Relative paths mean "from where you run the command"; steps get absolute ones."""
    path = Path(value).resolve()
    if must_exist and not path.exists():
        builtin = ", ".join(repr(s) for s in BUILTIN_SOURCES)
        raise ModelpressError(f"{key}={value!r}: {path} does not exist; give {builtin}, an existing "
                              ".csv/.jsonl/.npz file or an image folder")
    return str(path)


def train(target: Target, dataset, **hyperparameters):
    from components.train import train as train_component

    return target.apply(train_component(dataset=dataset, **hyperparameters))


def deploy(target: Target, model, repository, model_name):
    from components.deploy_local import deploy_local

    return target.apply(deploy_local(model=model, repository=repository, model_name=model_name), cache=False)


def batch_predict(target: Target, **parameters):
    from components.batch_predict import batch_predict as batch_predict_component

    # never cached: the source's contents and the champion change under the same parameters
    return target.apply(batch_predict_component(**parameters), cache=False)
