"""Per-target settings from configs/<target>.yaml: images, pipeline root, parameters, Vertex blocks.

What differs by target (its config keys, how the file becomes a Target, what a local path
means there) lives in pipelines/targets/<target>.py; this module merges a config's parameters
with overrides and checks them against the pipeline's signature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.data import BUILTIN_SOURCES
from modelpress.data.fingerprint import dataset_fingerprint, fingerprint as content_fingerprint
from modelpress.data.tokenizer import find_tokenizer_file
from modelpress.models.text import HF_PREFIX
from modelpress.selection.retraining import CHAMPION
from pipelines import targets
from pipelines.config import ROOT, check_keys, check_parameters, load_yaml
from pipelines.registry import PIPELINES
from pipelines.signature import signature
from pipelines.targets import Target

CONFIG_DIR = ROOT / "configs"
LOCAL_PATH_PARAMETERS = {"repository", "source", "warm_start", "weights", "code_dir", "onnx_model", "tokenizer"}
INPUT_PATH_PARAMETERS = LOCAL_PATH_PARAMETERS - {"repository"}  # must exist before a run starts
# built-in datasets; warm start from the deployed champion; no ONNX start
NOT_PATHS = {*BUILTIN_SOURCES, CHAMPION, "none"}
ARCHITECTURE_ARGUMENTS = (("architecture", "model_args"), ("student_architecture", "student_args"))


@dataclass
class TargetConfig:
    target: Target
    pipeline_root: str
    parameters: dict = field(default_factory=dict)  # {pipeline: {name: value}}
    raw: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)  # vertex: on every PipelineJob and schedule
    enable_caching: bool | None = None  # vertex: None keeps each task's compiled setting
    image_tag: str | None = None  # what GIT_SHA became

    @property
    def service_account(self) -> str:
        return self.target.service_account

    def pipeline_parameters(self, name: str, overrides: dict | None = None, *, fingerprint: bool = False,
                            gcs_client=None) -> dict:
        """The config's parameters for `name` with `overrides`, checked; with `fingerprint`, the
        source's content fingerprint filled in (it keys the data step's cache)."""
        sig = signature(name, self.target)
        base = dict(self.parameters.get(name, {}))
        overrides = dict(overrides or {})
        for arch_key, args_key in ARCHITECTURE_ARGUMENTS:
            # model arguments belong to their architecture: a new one starts from its defaults
            if arch_key in overrides and args_key not in overrides and overrides[arch_key] != base.get(arch_key):
                base[args_key] = {}
        merged = {**base, **overrides}
        if isinstance(merged.get("normalise"), dict):  # {mean, std} in YAML; a JSON string parameter in KFP
            merged["normalise"] = json.dumps(merged["normalise"])
        values = check_parameters(merged, sig, name)
        if values.get("text_column") and name == "training" and self.target.name == "vertex":
            raise ModelpressError("the training pipeline on Vertex AI trains with distributed-train, which does not "
                                  "train text models yet: train them with the optimise pipeline (its train step "
                                  "takes text)")
        if values.get("tune_serving") and not self.target.tunes_serving:
            raise ModelpressError("tune_serving measures the machine its step runs on, which on Vertex AI is not "
                                  "the endpoint's: run `modelpress tune-serving` on a machine of the serving "
                                  "machine_type (docs/serving.md), or set tune_serving: false")
        if name == "batch_prediction" and self.target.name == "vertex":
            from modelpress.deploy.vertex import batch_job
            batch_job.check_parameters({**{k: d for k, (_, d) in sig.items()}, **values})
        for key in LOCAL_PATH_PARAMETERS & set(sig):
            value = str(values.get(key, sig[key][1]) or "")
            if key == "code_dir" and value and self.target.name == "vertex":
                self.target.kind.path_parameter(key, value, must_exist=True)  # refused: the code is in the image
            if not value or value.startswith("gs://") or value in NOT_PATHS:
                continue
            values[key] = self.target.kind.path_parameter(key, value, must_exist=key in INPUT_PATH_PARAMETERS)
        self._hf_folder(values, sig)
        if fingerprint and "source_fingerprint" in sig and not values.get("source_fingerprint"):
            values["source_fingerprint"] = dataset_fingerprint(values.get("source", sig["source"][1]),
                                                               values.get("tokenizer") or "", gcs_client=gcs_client)
        if fingerprint and "start_fingerprint" in sig and not values.get("start_fingerprint"):
            values["start_fingerprint"] = start_fingerprint(values, gcs_client=gcs_client)
        return values


    def _hf_folder(self, values: dict, sig: dict) -> None:
        """A text run from hf:<folder>: the folder as a path of this target, and its own tokenizer
        (beside the weights) as the dataset's unless another one is given."""
        architecture = str(values.get("architecture", sig.get("architecture", ("", ""))[1]) or "")
        if not values.get("text_column") or not architecture.startswith(HF_PREFIX):
            return
        folder = architecture[len(HF_PREFIX):]
        if not folder.startswith("gs://"):
            folder = self.target.kind.path_parameter("architecture", folder, must_exist=True)
            values["architecture"] = HF_PREFIX + folder
        if not values.get("tokenizer"):
            if not folder.startswith("gs://"):  # the model reads its own tokenizer's ids: it must be there
                try:
                    find_tokenizer_file(folder)
                except ModelpressError as exc:
                    raise ModelpressError(f"{architecture}: {exc} Its model needs the ids of the tokenizer it was "
                                          "trained with: save that beside it, or set tokenizer to its folder") from None
            values["tokenizer"] = folder


START_FILES = ("weights", "onnx_model", "code_dir")  # what the user brings besides the data


def start_files(values: dict) -> dict[str, str]:
    """The files a run starts from: START_FILES, and an hf:<folder> model (its weights and config)."""
    files = {key: values[key] for key in START_FILES if values.get(key) and values[key] not in NOT_PATHS}
    architecture = str(values.get("architecture") or "")
    if architecture.startswith(HF_PREFIX):
        files["hf"] = architecture[len(HF_PREFIX):]
    return files


def start_fingerprint(values: dict, *, gcs_client=None) -> str:
    """The content fingerprints of the weights, ONNX file, code or Hugging Face folder a run starts
    from: part of the train and baseline-export steps' cache keys, so a checkpoint overwritten in
    place reruns them."""
    return ";".join(f"{key}={content_fingerprint(value, gcs_client=gcs_client)}"
                    for key, value in start_files(values).items())


def parameter_help() -> str:
    """`--set` keys per pipeline with their defaults, for --help."""
    lines = ["--set keys (default in parentheses; configs/local.yaml may set others):"]
    for name in sorted(PIPELINES):
        sig = signature(name, Target(name="local"))
        shown = ", ".join(f"{k} ({d!r})" if d not in ("", None) else k for k, (_, d) in sig.items())
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)


def load(target_name: str, path: str | Path | None = None, image_tag: str | None = None) -> TargetConfig:
    kind = targets.module(target_name)
    path = Path(path) if path else CONFIG_DIR / f"{target_name}.yaml"
    data = load_yaml(str(path))
    check_keys(data, kind.CONFIG_KEYS, str(path))
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ModelpressError(f"{path}: 'parameters' maps pipeline names to their parameters")
    check_keys(params, list(PIPELINES), f"{path} 'parameters'")
    cfg = TargetConfig(parameters=params, raw=data, **kind.from_config(data, path, image_tag))
    for name in params:  # fail on a misspelt key before anything runs
        cfg.pipeline_parameters(name)
    return cfg


SCHEDULE_KEYS = ("pipeline", "display_name", "cron", "parameters", "max_concurrent_run_count")


def load_schedules(path: str | Path, cfg: TargetConfig) -> list[dict]:
    """configs/schedules.yaml: every entry checked, its parameters merged over the config's block."""
    from modelpress.deploy.vertex import check_cron, check_display_name

    data = load_yaml(str(path))
    check_keys(data, ["schedules"], str(path))
    entries = data.get("schedules") or []
    if not isinstance(entries, list) or not entries:
        raise ModelpressError(f"{path}: 'schedules' is a list of {{{', '.join(SCHEDULE_KEYS)}}}")
    out, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path} schedules[{i}]"
        if not isinstance(entry, dict):
            raise ModelpressError(f"{where} must be a mapping with {', '.join(SCHEDULE_KEYS)}")
        check_keys(entry, SCHEDULE_KEYS, where)
        missing = [k for k in ("pipeline", "display_name", "cron") if not entry.get(k)]
        if missing:
            raise ModelpressError(f"{where} lacks {', '.join(missing)}")
        if entry["pipeline"] not in PIPELINES:
            raise ModelpressError(f"{where}: unknown pipeline {entry['pipeline']!r}; choose one of {sorted(PIPELINES)}")
        name = check_display_name(entry["display_name"], where)
        if name in seen:
            raise ModelpressError(f"{where}: display_name {name!r} is used twice; schedules are found by it")
        seen.add(name)
        concurrency = entry.get("max_concurrent_run_count", 1)
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ModelpressError(f"{where}: max_concurrent_run_count must be a whole number >= 1, got {concurrency!r}")
        overrides = entry.get("parameters") or {}
        if not isinstance(overrides, dict):
            raise ModelpressError(f"{where}: parameters map names to values")
        out.append({"pipeline": entry["pipeline"], "display_name": name,
                    "cron": check_cron(entry["cron"], where), "max_concurrent_run_count": concurrency,
                    "parameters": cfg.pipeline_parameters(entry["pipeline"], overrides)})
    return out
