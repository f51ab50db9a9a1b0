"""YAML configuration: loading, key checks, `--set key=value` overrides and parameter validation.

Pipelines expose their parameters as a signature ``{name: (type_name, default)}`` with KFP's
type names (String, Integer, Float, Boolean, Dict, List); this module checks a config
against it without importing KFP. The library owns the rules (TrainSettings, Policy, the
architectures); this module only knows which parameter each rule reads.
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, fields
from pathlib import Path

import yaml

from modelpress.core.errors import ModelpressError

ROOT = Path(__file__).resolve().parents[1]  # the repository: configs/, build/, git
_PY_TYPES = {
    "String": (str,), "Integer": (int,), "Float": (float, int), "Boolean": (bool,),
    "Dict": (dict,), "List": (list,),
}


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise ModelpressError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ModelpressError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ModelpressError(f"{path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def check_keys(data: dict, allowed: set[str] | list[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ModelpressError(f"unknown key(s) in {where}: {', '.join(hints)}. "
                              f"Valid keys: {', '.join(sorted(allowed))}")


def block(cls, data, where: str):
    """A settings dataclass from a config mapping: known keys, typed values, then its own checks."""
    if not isinstance(data, dict):
        raise ModelpressError(f"{where} must be a mapping of settings, not {type(data).__name__}")
    specs = {f.name: f for f in fields(cls)}
    check_keys(data, list(specs), where)
    missing = [n for n, f in specs.items() if f.default is MISSING and n not in data]
    if missing:
        raise ModelpressError(f"{where} lacks {', '.join(missing)}")
    for name, value in data.items():
        expected = type(specs[name].default) if specs[name].default is not MISSING else str
        if not isinstance(value, expected) or isinstance(value, bool) and expected is not bool:
            raise ModelpressError(f"{where}.{name} must be {expected.__name__}, got {value!r}")
    return cls(**data).validate(where)


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=3", "model_args={channels: [8]}"]`` -> dict, values parsed as YAML."""
    out = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ModelpressError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ModelpressError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return out


def check_parameters(values: dict, signature: dict[str, tuple[str, object]], pipeline: str) -> dict:
    """Reject unknown keys and wrongly typed values; return the values to pass."""
    check_keys(values, list(signature), f"the parameters of pipeline {pipeline!r}")
    out = {}
    for key, value in values.items():
        type_name = signature[key][0]
        accepted = _PY_TYPES.get(type_name)
        bad_bool = isinstance(value, bool) and type_name != "Boolean"
        if accepted and (not isinstance(value, accepted) or bad_bool):
            raise ModelpressError(f"parameter {key!r} of pipeline {pipeline!r} must be "
                                  f"{type_name}, got {value!r} ({type(value).__name__})")
        out[key] = float(value) if type_name == "Float" else value
    validate_values({**{k: d for k, (_, d) in signature.items()}, **out})
    return out


def validate_values(values: dict) -> None:
    """Check every parameter the library knows before any step starts: one line naming the
    key and what it accepts, instead of a failure deep inside a running pipeline."""
    from modelpress import data, models
    from modelpress.compression import quantisation, recipe, text_quantisation
    from modelpress.models import text as text_models
    from modelpress.models import text_sources
    from modelpress.data import preprocessing
    from modelpress.export import edge
    from modelpress.selection import decision
    from modelpress.training.loop import TrainSettings

    names = {f.name for f in fields(TrainSettings)}
    TrainSettings(**{k: v for k, v in values.items() if k in names}).validate()
    for key in ("val_fraction", "test_fraction"):
        if key in values and not 0 < values[key] < 1:
            raise ModelpressError(f"{key} must be between 0 and 1 (exclusive), got {values[key]}")
    if "image_size" in values and values["image_size"] < 0:
        raise ModelpressError(f"image_size must be 0 (native) or positive, got {values['image_size']}")
    if "channels" in values:
        preprocessing.check_channels(values["channels"])
    if "task" in values:
        data.check_task(values["task"])
    if "normalise" in values:
        data.parse_normalise(values["normalise"])
    if values.get("rmse_ceiling", 0) < 0:
        raise ModelpressError(f"rmse_ceiling must be >= 0 (0: no ceiling), got {values['rmse_ceiling']}")
    # a pipeline that builds a text dataset; batch_prediction's text_column only names a column to read
    text = bool(values.get("text_column")) and "vocab_size" in values
    if text:
        _check_text(values)
    else:
        _check_start(values)
    for arch_key, args_key in (("architecture", "model_args"), ("student_architecture", "student_args")):
        if arch_key not in values or (arch_key == "architecture" and recipe.onnx_start(values.get("onnx_model"))):
            continue
        if arch_key == "student_architecture" and "distil" not in values.get("steps", recipe.STEPS):
            continue  # the recipe leaves distillation out: no student is built
        if text:
            text_sources.check_text_arguments(values[arch_key], values.get(args_key) or {}, arch_key, args_key,
                                              max_length=values.get("max_length"))
        elif text_sources.is_text_architecture(values[arch_key]) or values[arch_key] == text_models.FROM_TEACHER:
            raise ModelpressError(f"{arch_key} {values[arch_key]!r} is a text model: set text_column to the column "
                                  "of your texts (and source to a .csv or .jsonl of them)")
        else:
            models.check_arguments(values[arch_key], values.get(args_key) or {}, arch_key, args_key,
                                   code_dir=values.get("code_dir") or "")
    if "quantisation_methods" in values:
        methods = values["quantisation_methods"]
        known = text_quantisation.METHODS if text else quantisation.METHODS
        if not methods:
            raise ModelpressError(f"quantisation_methods is empty: list at least one of {list(known)}")
        for m in methods:
            if m not in known:
                extra = " (fused is for text models: set text_column)" if m in text_quantisation.METHODS else ""
                raise ModelpressError(f"quantisation_methods: {m!r} is not a quantisation method{extra}; "
                                      f"choose from {list(known)}")
    _in_range(values, "prune_amount", 0, 1, high_open=True)
    _in_range(values, "alpha", 0, 1)
    if values.get("temperature", 1) <= 0:
        raise ModelpressError(f"temperature must be > 0, got {values['temperature']}")
    if values.get("qat_learning_rate", 1) <= 0:
        raise ModelpressError(f"qat_learning_rate must be > 0, got {values['qat_learning_rate']}")
    for key in ("calibration_samples", "threads", "max_windows", "prune_finetune_epochs", "distil_epochs",
                "qat_epochs", "tune_concurrency", "chunk_rows"):
        if key in values and values[key] < 1:
            raise ModelpressError(f"{key} must be a whole number >= 1, got {values[key]}")
    if values.get("window_seconds", 1) <= 0:
        raise ModelpressError(f"window_seconds must be > 0, got {values['window_seconds']}")
    if values.get("tune_search", "quick") not in ("quick", "grid"):
        raise ModelpressError(f"tune_search must be quick (hill-climb) or grid, got {values['tune_search']!r}")
    if values.get("edge_target_platform", "") not in edge.TARGET_PLATFORMS:
        raise ModelpressError(f"edge_target_platform must be one of {list(edge.TARGET_PLATFORMS)} ('' for any CPU), "
                              f"got {values['edge_target_platform']!r}")
    if "output_format" in values:  # batch_prediction
        from modelpress.batch.writers import check_format

        check_format(values["output_format"])
    if values.get("version", 0) < 0:
        raise ModelpressError(f"version must be 0 (the deployed champion) or a version number, got {values['version']}")
    if values.get("tune_p99_budget_ms", 0) < 0:
        raise ModelpressError(f"tune_p99_budget_ms must be >= 0 (0: no budget), got {values['tune_p99_budget_ms']}")
    policy = {f.name: values[f.name] for f in fields(decision.Policy) if f.name in values}
    if policy:  # the task: as set, or a built-in's own; "auto" on a file is known once the data step reads it
        task = values.get("task", "auto")
        if task == "auto":
            task = data.BUILTIN_TASKS.get(values.get("source"))
        if task is None and policy.get("tolerance_mode", "absolute") == "absolute" and policy.get("tolerance", 0) >= 1:
            raise ModelpressError(f"tolerance {policy['tolerance']} (absolute) is an error in the target's units, "
                                  "which only regression has: set task: regression, or a tolerance below 1 "
                                  "(accuracy points / 100)")
        decision.Policy(**policy).validate(task)
    if "model_name" in values:
        from modelpress.deploy.repository import check_name

        check_name(values["model_name"])


def _check_start(values: dict) -> None:
    """The recipe and the starting point (scratch, fine-tune, as-is, ONNX file) fit together."""
    from modelpress.compression import recipe

    if "steps" in values:
        recipe.check_steps(values["steps"])
    if "weights" not in values and values.get("epochs", 1) == 0:
        raise ModelpressError("epochs 0 (take a trained model as it is) is a start of the optimise pipeline, "
                              "with weights; this pipeline trains: set epochs >= 1")
    if "weights" in values or "onnx_model" in values:
        recipe.check_start(epochs=values.get("epochs", 1), weights=values.get("weights") or "",
                           replace_head=bool(values.get("replace_head")), onnx_model=values.get("onnx_model") or "",
                           steps=values.get("steps", []))


def _check_text(values: dict) -> None:
    """A text run (text_column set): its tokenizer settings and start (bert from scratch, hf:<folder>
    fine-tuned or as it is)."""
    from modelpress.compression import recipe
    from modelpress.data.tokenizer import MIN_VOCAB_SIZE, find_tokenizer_file

    if "steps" in values:
        recipe.check_steps(values["steps"])
        if "qat" in values["steps"]:
            raise ModelpressError("steps: qat (quantisation-aware training) covers image and table models; for a "
                                  "text model use quantisation_methods [dynamic-int8] (int8 MatMuls, no retraining)")
    if values.get("task", "auto") == "regression":
        raise ModelpressError("task regression does not apply to text datasets (text_column set): they are "
                              "classification datasets; set task to auto or classification")
    if values.get("vocab_size", MIN_VOCAB_SIZE) < MIN_VOCAB_SIZE:
        raise ModelpressError(f"vocab_size must be at least {MIN_VOCAB_SIZE}, got {values['vocab_size']}")
    if values.get("max_length", 3) < 3:
        raise ModelpressError(f"max_length must be at least 3 tokens ([CLS], one of text, [SEP]), got "
                              f"{values['max_length']}")
    tokenizer = str(values.get("tokenizer") or "")
    if tokenizer and not tokenizer.startswith("gs://"):  # a bucket is read where the data step runs
        find_tokenizer_file(tokenizer)
    if values.get("weights"):
        raise ModelpressError("weights is for image and table models; a text model brings its weights in its "
                              "folder: set architecture: hf:<folder> and leave weights empty")
    if recipe.onnx_start(values.get("onnx_model")):
        raise ModelpressError("onnx_model (an ONNX file start) takes image and table datasets; a text run starts "
                              "from architecture bert (trained here) or hf:<folder> (fine-tuned, or as it is with "
                              "epochs 0)")
    pretrained = str(values.get("architecture", "")).startswith("hf:")
    if values.get("epochs", 1) == 0 and not pretrained:
        raise ModelpressError("epochs 0 takes a trained model as it is: set architecture: hf:<folder>, or "
                              "epochs >= 1 to train the bert")
    if values.get("replace_head") and not pretrained:
        raise ModelpressError("replace_head applies to an hf:<folder> model; drop it for architecture bert")
    if values.get("replace_head") and values.get("epochs", 1) == 0:
        raise ModelpressError("replace_head with epochs 0 would score an untrained classifier; fine-tune it "
                              "(epochs >= 1) or drop replace_head")
    if values.get("warm_start"):
        raise ModelpressError("warm_start is for image and table models; retrain a text model from scratch "
                              "(warm_start: \"\"), or fine-tune a deployed one with the optimise pipeline "
                              "(architecture: hf:<its torch model folder>)")
    if values.get("code_dir"):
        raise ModelpressError("code_dir is for your package.module:callable image and table models; a text model is "
                              "bert or an hf:<folder>: leave code_dir empty")


def _in_range(values: dict, key: str, low: float, high: float, *, high_open: bool = False) -> None:
    if key not in values:
        return
    v = values[key]
    if not (low <= v < high if high_open else low <= v <= high):
        raise ModelpressError(f"{key} must be in [{low}, {high}{')' if high_open else ']'}, got {v}")
