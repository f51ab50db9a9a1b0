"""Per-target settings from configs/<target>.yaml: images, pipeline root, parameters, Vertex blocks.

For the vertex target every image must be immutable: a literal GIT_SHA in an image is replaced
by the image tag (`--image-tag`, else `git rev-parse --short HEAD` of this checkout), the tag
`make images TAG=$(git rev-parse --short HEAD)` pushed; `:latest` and untagged images are refused.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from pipelines.config import check_keys, check_parameters, load_yaml
from modelpress.core.errors import ModelpressError
from modelpress.data.fingerprint import fingerprint as content_fingerprint
from modelpress.deploy.vertex import GIT_SHA, Serving, resolve_image
from pipelines.registry import PIPELINES
from pipelines.signature import signature
from pipelines.targets import Target, TrainingJob

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
TOP_LEVEL_KEYS = {
    "local": {"image", "pipeline_root", "parameters"},
    "vertex": {"image", "pipeline_root", "parameters", "project", "region", "service_account",
               "labels", "enable_caching", "distributed", "serving"},
}
VERTEX_REQUIRED = ("image", "pipeline_root", "project", "region", "service_account")


LOCAL_PATH_PARAMETERS = {"repository", "source", "warm_start"}
INPUT_PATH_PARAMETERS = {"source", "warm_start"}  # must exist before a run starts
NOT_PATHS = {"digits", "champion"}  # the built-in dataset; warm start from the deployed champion
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
        pipeline = PIPELINES[name](self.target)
        sig = signature(pipeline)
        base = dict(self.parameters.get(name, {}))
        overrides = dict(overrides or {})
        for arch_key, args_key in ARCHITECTURE_ARGUMENTS:
            # model arguments belong to their architecture: a new one starts from its defaults
            if arch_key in overrides and args_key not in overrides and overrides[arch_key] != base.get(arch_key):
                base[args_key] = {}
        values = check_parameters({**base, **overrides}, sig, name)
        for key in LOCAL_PATH_PARAMETERS & set(sig):
            value = str(values.get(key, sig[key][1]) or "")
            if not value or value.startswith("gs://") or value in NOT_PATHS:
                continue
            if self.target.name == "vertex":
                raise ModelpressError(f"{key}={value!r}: on Vertex AI paths must be gs:// URIs (upload it with "
                                      "`gcloud storage cp`, see docs/vertex.md)")
            # Relative paths mean "from where you run the command"; steps get absolute ones.
            path = Path(value).resolve()
            if key in INPUT_PATH_PARAMETERS and not path.exists():
                raise ModelpressError(f"{key}={value!r}: {path} does not exist; give 'digits', an existing "
                                      ".csv/.npz file or an image folder")
            values[key] = str(path)
        if fingerprint and "source_fingerprint" in sig and not values.get("source_fingerprint"):
            values["source_fingerprint"] = content_fingerprint(values.get("source", sig["source"][1]),
                                                               gcs_client=gcs_client)
        return values


def parameter_help() -> str:
    """`--set` keys per pipeline with their defaults, for --help."""
    from pipelines.targets import Target

    lines = ["--set keys (default in parentheses; configs/local.yaml may set others):"]
    for name in sorted(PIPELINES):
        sig = signature(PIPELINES[name](Target(name="local")))
        shown = ", ".join(f"{k} ({d!r})" if d not in ("", None) else k for k, (_, d) in sig.items())
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)


def git_sha() -> str:
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelpressError(f"cannot run git to fill {GIT_SHA} in the image names ({exc}): "
                              "pass --image-tag TAG") from None
    if proc.returncode != 0:
        raise ModelpressError(f"`git rev-parse --short HEAD` failed in {ROOT} ({proc.stderr.strip()}): "
                              "pass --image-tag TAG")
    sha = proc.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "modelpress", "components", "pipelines"],
                           cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    if dirty:  # the template would carry code the image tagged `sha` does not hold
        print(f"warning: uncommitted changes under modelpress/, components/ or pipelines/; the images tagged {sha} "
              "do not contain them. Commit, run `make images`, then submit.", file=sys.stderr)
    return sha


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


def _vertex_fields(data: dict, path: Path, image_tag: str | None) -> tuple[dict, dict, bool | None, str | None]:
    """Target fields, labels, caching and the image tag from a vertex config."""
    where = str(path)
    missing = [k for k in VERTEX_REQUIRED if not data.get(k)]
    if missing:
        raise ModelpressError(f"{where} lacks {', '.join(missing)}: the vertex target needs them")
    if not str(data["pipeline_root"]).startswith("gs://"):
        raise ModelpressError(f"{where}: pipeline_root must be a gs:// URI, got {data['pipeline_root']!r}")
    labels = data.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ModelpressError(f"{where}: labels map names to strings, e.g. {{team: ml}}")
    caching = data.get("enable_caching")
    if caching is not None and not isinstance(caching, bool):
        raise ModelpressError(f"{where}: enable_caching is true, false or absent (each task's own setting)")
    serving = dict(data.get("serving") or {})
    distributed = dict(data.get("distributed") or {})
    images = [data["image"], serving.get("serve_image", ""), distributed.get("image", "")]
    if any(GIT_SHA in image for image in images):
        image_tag = image_tag or git_sha()
    if "serve_image" in serving:
        serving["serve_image"] = resolve_image(serving["serve_image"], image_tag, f"{where} serving.serve_image")
    if distributed.get("image"):
        distributed["image"] = resolve_image(distributed["image"], image_tag, f"{where} distributed.image")
    return dict(
        image=resolve_image(data["image"], image_tag, f"{where} image"), project=data["project"],
        region=data["region"], service_account=data["service_account"], labels=tuple(sorted(labels.items())),
        serving=block(Serving, serving, f"{where} serving") if data.get("serving") else None,
        training_job=block(TrainingJob, distributed, f"{where} distributed") if data.get("distributed") else None,
    ), labels, caching, image_tag


def load(target_name: str, path: str | Path | None = None, image_tag: str | None = None) -> TargetConfig:
    path = Path(path) if path else CONFIG_DIR / f"{target_name}.yaml"
    data = load_yaml(str(path))
    check_keys(data, TOP_LEVEL_KEYS[target_name], str(path))
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise ModelpressError(f"{path}: 'parameters' maps pipeline names to their parameters")
    check_keys(params, list(PIPELINES), f"{path} 'parameters'")
    root = data.get("pipeline_root", "local_outputs")
    labels, caching, tag = {}, None, None
    if target_name == "vertex":
        vertex_fields, labels, caching, tag = _vertex_fields(data, path, image_tag)
        target = Target(name=target_name, **vertex_fields)
    else:
        target = Target(name=target_name, image=data.get("image", Target.image))
        root = str(Path(root).resolve())  # relative to where the command runs
    cfg = TargetConfig(target=target, pipeline_root=root, parameters=params, raw=data, labels=labels,
                       enable_caching=caching, image_tag=tag)
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
