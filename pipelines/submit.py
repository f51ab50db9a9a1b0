"""Compile a pipeline and run it on Vertex AI Pipelines, now or on a schedule.

    python pipelines/submit.py <pipeline> [--config configs/vertex.yaml] [--set key=value ...]
                               [--schedule CRON [--schedule-name NAME] [--max-concurrent-runs N]]
                               [--image-tag TAG] [--dry-run]
    python pipelines/submit.py --schedules configs/schedules.yaml [--config configs/vertex.yaml] [--dry-run]

Without --schedule: one PipelineJob (project, region, pipeline root, service account, labels,
caching and parameter values from the config). With --schedule or --schedules: the
PipelineJobSchedule with that display name is created, or updated in place when it exists
(cron, concurrency and the pipeline itself), so running the command again never duplicates it.
The cron names its time zone: "TZ=Europe/Brussels 0 3 * * 1".

--dry-run prints the exact requests as JSON on stdout and sends nothing; it needs no
credentials. Images: GIT_SHA in the config becomes --image-tag, else `git rev-parse --short HEAD`.
The shipped config's example project (my-project) and bucket (my-bucket) are refused before any
Google Cloud call; a dry run only warns, one line per key, so the requests can be read first.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (sys.path: repository root first)

from modelpress.deploy import vertex
from pipelines.config import parse_overrides
from modelpress.core.errors import ModelpressError
from modelpress.data.fingerprint import dataset_fingerprint
from pipelines import settings
from pipelines.compile import compile_pipeline
from pipelines.registry import PIPELINES
from pipelines.signature import signature


def _plan(args, cfg) -> list[dict]:
    """One entry per PipelineJob to build: pipeline, parameters, and the schedule if any."""
    if args.schedules:
        return [{"pipeline": s["pipeline"], "parameters": s["parameters"],
                 "schedule": {k: s[k] for k in ("display_name", "cron", "max_concurrent_run_count")}}
                for s in settings.load_schedules(args.schedules, cfg)]
    params = cfg.pipeline_parameters(args.pipeline, parse_overrides(args.overrides))
    schedule = None
    if args.schedule:
        schedule = {"display_name": args.schedule_name or f"modelpress-{args.pipeline}",
                    "cron": vertex.check_cron(args.schedule, "--schedule"),
                    "max_concurrent_run_count": args.max_concurrent_runs}
    return [{"pipeline": args.pipeline, "parameters": params, "schedule": schedule}]


# The example values configs/vertex.yaml and configs/schedules.yaml ship with. Matched as whole
# names (not inside, say, my-project-123), wherever they occur: ids, gs:// URIs, image names.
PLACEHOLDERS = {"my-project": "project", "my-bucket": "bucket"}
_PLACEHOLDER = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, PLACEHOLDERS)) + r")(?![\w-])")
_FIX = {
    "project": "your Google Cloud project id",
    "service_account": "the service account that runs the pipeline, <name>@<your project>.iam.gserviceaccount.com",
    "image": "an image in your Artifact Registry repository, "
             "<region>-docker.pkg.dev/<your project>/modelpress/<name>:GIT_SHA",
    "source": "the gs:// URI of your data (`gcloud storage cp FILE gs://<your bucket>/data/`), or --set source=...",
}
SETUP_HINT = "docs/vertex.md, step 0"


def _shown(path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(settings.ROOT)) if path.is_relative_to(settings.ROOT) else str(path)


def placeholder_warnings(args, cfg, plan) -> list[tuple[str, str]]:
    """(key, one-line warning) for every setting that still holds an example placeholder.

    The config's own keys are read as written (images before GIT_SHA is filled in); the
    parameters as the run gets them, so `--set source=gs://...` or a schedule's own value
    replaces the config's placeholder and is not reported."""
    config = _shown(args.config)
    raw = cfg.raw
    found = [(f"{config} {key}", key, value) for key, value in [
        ("project", raw.get("project")), ("pipeline_root", raw.get("pipeline_root")),
        ("service_account", raw.get("service_account")), ("image", raw.get("image")),
        ("distributed.image", (raw.get("distributed") or {}).get("image")),
        ("ray.image", (raw.get("ray") or {}).get("image")),
        ("serving.serve_image", (raw.get("serving") or {}).get("serve_image")),
        ("serving.triton_image", (raw.get("serving") or {}).get("triton_image"))]]
    for item in plan:
        from_config = cfg.parameters.get(item["pipeline"]) or {}
        for name, value in item["parameters"].items():
            if from_config.get(name) == value:
                key = f"parameters.{item['pipeline']}.{name}"
                found.append((f"{config} {key}", key, value))
            elif args.schedules:
                label = f"{_shown(args.schedules)} {item['schedule']['display_name']} parameters.{name}"
                found.append((label, label, value))
            else:
                found.append((f"--set {name}", f"--set {name}", value))
    out, seen = [], set()
    for label, key, value in found:
        match = _PLACEHOLDER.search(value) if isinstance(value, str) else None
        if not match or key in seen:
            continue
        seen.add(key)
        kind = PLACEHOLDERS[match.group(1)]
        leaf = key.rsplit(".", 1)[-1]
        fix = _FIX.get("image" if leaf.endswith("image") else leaf) or \
            ("a gs:// URI in your bucket" if value.startswith("gs://") else f"your {kind}")
        out.append((key, f"warning: {label} = {value!r} still holds the example {kind} {match.group(1)!r}: "
                         f"set {fix} ({SETUP_HINT})"))
    return out


def fingerprint_source(item: dict, cfg, *, dry_run: bool, log) -> None:
    """Fill the source's content fingerprint, which keys the data step's cache.

    A schedule's parameters are fixed when it is made, so its runs cannot fingerprint the data
    each one reads: retraining never caches its data step; for other pipelines say so.
    """
    params = item["parameters"]
    source = str(params.get("source", ""))
    if not source or params.get("source_fingerprint") or \
            "source_fingerprint" not in signature(item["pipeline"], cfg.target):  # no data step (batch_prediction)
        return
    if item["schedule"]:
        if item["pipeline"] != "retraining" and cfg.enable_caching is not False:
            log(f"warning: schedule {item['schedule']['display_name']}: {item['pipeline']}'s data step is cached "
                "and a schedule cannot fingerprint each run's data; set enable_caching: false in the config "
                "if the data behind its source changes")
        return
    if dry_run and source.startswith("gs://"):
        log(f"dry run: source_fingerprint of {source} is read from Cloud Storage at submission")
        return
    params["source_fingerprint"] = dataset_fingerprint(source, str(params.get("tokenizer") or ""))
    log(f"source {source}: content fingerprint {params['source_fingerprint']} (the data step's cache key)")
    if "start_fingerprint" in signature(item["pipeline"], cfg.target) and settings.start_files(params):
        params["start_fingerprint"] = settings.start_fingerprint(params)


def run(args, log=lambda s: print(s, file=sys.stderr)) -> list[dict]:
    """Compile, build the jobs, then send (or, with --dry-run, only describe) the requests."""
    cfg = settings.load("vertex", args.config, image_tag=args.image_tag)
    plan = _plan(args, cfg)
    if any(item["pipeline"] == "batch_prediction" for item in plan):
        from modelpress.deploy.vertex import batch_job
        batch_job.check_serving(cfg.target.serving)
    placeholders = placeholder_warnings(args, cfg, plan)
    if placeholders and not args.dry_run:  # before compiling, credentials or any Google Cloud call
        keys = ", ".join(key for key, _ in placeholders)
        raise ModelpressError(f"{_shown(args.config)} still holds the example project/bucket in {keys}: set "
                              f"your project, bucket, service account and registry there ({SETUP_HINT}); "
                              "--dry-run lists each")
    for _, warning in placeholders:
        log(warning)
    for item in plan:
        fingerprint_source(item, cfg, dry_run=args.dry_run, log=log)
    credentials = None
    if args.dry_run:  # the SDK resolves credentials when it builds a resource; give it ones that never call
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    target, out = cfg.target, []
    for item in plan:
        template = compile_pipeline(item["pipeline"], target, args.output_dir)
        log(f"compiled {template} (images tagged {cfg.image_tag or 'as configured'})")
        job = vertex.pipeline_job(str(template), display_name=item["pipeline"], project=target.project,
                                  location=target.region, pipeline_root=cfg.pipeline_root,
                                  parameter_values=item["parameters"], enable_caching=cfg.enable_caching,
                                  labels=cfg.labels, job_id=args.job_id, credentials=credentials)
        if args.dry_run:
            out += vertex.planned_requests(job, service_account=cfg.service_account, schedule=item["schedule"])
            out += ray_requests(item, cfg)
        elif item["schedule"]:
            action, schedule = vertex.apply_schedule(job, service_account=cfg.service_account, log=log,
                                                     **item["schedule"])
            out.append({"action": action, "schedule": schedule.name})
        else:
            created = vertex.submit(job, service_account=cfg.service_account, log=log)
            out.append({"action": "submitted", "pipeline_job": created.name})
    return out


def ray_requests(item: dict, cfg) -> list[dict]:
    """What the training pipeline's train step sends when it runs on Ray on Vertex AI (engine: ray):
    shown by a dry run beside the PipelineJob, with the run's own parameters in the Ray job."""
    target = cfg.target
    if item["pipeline"] != "training" or not target.training_job or target.training_job.engine != "ray":
        return []
    from dataclasses import fields

    from modelpress.deploy.vertex import ray_cluster
    from modelpress.training import TrainSettings

    p = {**{k: d for k, (_, d) in signature(item["pipeline"], target).items()}, **item["parameters"]}
    example = {"dataset_uri": f"{cfg.pipeline_root}/<run>/make-dataset/dataset",
               "model_uri": f"{cfg.pipeline_root}/<run>/ray-train/model", "architecture": p["architecture"],
               "model_args": p["model_args"], "submission_id": "modelpress-train-<time>",
               "settings": {f.name: p[f.name] for f in fields(TrainSettings) if f.name in p},
               "layout": {"parallelism": target.training_job.parallelism,
                          "mixed_precision": target.training_job.mixed_precision}}
    example["result_uri"] = example["model_uri"] + "-ray-result"
    return ray_cluster.planned(target.ray, target.project, target.region, service_account=target.service_account,
                               labels=cfg.labels, example=example)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", choices=sorted(PIPELINES))
    parser.add_argument("--config", default=str(settings.CONFIG_DIR / "vertex.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one pipeline parameter (value parsed as YAML); repeatable")
    parser.add_argument("--schedule", metavar="CRON",
                        help='create or update a schedule, e.g. "TZ=Europe/Brussels 0 3 * * 1"')
    parser.add_argument("--schedule-name", help="the schedule's display name (default: modelpress-<pipeline>)")
    parser.add_argument("--max-concurrent-runs", type=int, default=1)
    parser.add_argument("--schedules", metavar="YAML",
                        help="apply every schedule in this file (configs/schedules.yaml)")
    parser.add_argument("--image-tag", help="replaces GIT_SHA in the configured images (default: git HEAD)")
    parser.add_argument("--job-id", help="the PipelineJob id (default: <pipeline>-<timestamp>)")
    parser.add_argument("--output-dir", type=Path, default=settings.ROOT / "build" / "pipelines",
                        help="where the compiled templates are written")
    parser.add_argument("--dry-run", action="store_true", help="print the requests as JSON; send nothing")
    args = parser.parse_args(argv)
    if bool(args.pipeline) == bool(args.schedules):
        parser.error("name a pipeline, or give --schedules FILE (not both)")
    if args.schedules and (args.schedule or args.overrides):
        parser.error("--schedules takes cron and parameters from its file: drop --schedule/--set")
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    try:
        result = run(args)
    except ModelpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except auth_exceptions.DefaultCredentialsError as exc:
        print(f"error: no Google Cloud credentials ({exc}). Run `gcloud auth application-default login` or set "
              "GOOGLE_APPLICATION_CREDENTIALS; --dry-run needs none.", file=sys.stderr)
        return 2
    except api_exceptions.GoogleAPICallError as exc:
        print(f"error: Vertex AI refused the request: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
