"""Run a pipeline locally through kfp.local (SubprocessRunner in this virtual environment).

    python pipelines/run_local.py <pipeline> [--config configs/local.yaml] [--set key=value ...]
    python pipelines/run_local.py <pipeline> --runner docker [--image IMAGE]

`--runner docker` runs each task in the CPU image (containers/cpu/Dockerfile; the config's
`image`, or --image) through kfp.local.DockerRunner; it needs a Docker engine.

Writes summary.json (per task: status, seconds, parameters, metrics, artifact paths) and
run.log in the run's folder under the config's pipeline_root, and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (sys.path: repository root first)

from pipelines.config import parse_overrides
from modelpress.core.errors import ModelpressError
from pipelines import local_run, settings
from pipelines.registry import PIPELINES, build

RUNNERS = ("subprocess", "docker")
OUTPUT_FOLDER_PARAMETERS = {"repository"}  # written by tasks: created so they can be mounted


def host_paths(params: dict, pipeline_root: Path) -> list[Path]:
    """Host files and folders the parameters name, which a task container must see.

    The pipeline root is mounted already; a missing input is left out (the task reports it).
    """
    paths = []
    for key in sorted(settings.LOCAL_PATH_PARAMETERS & set(params)):
        path = Path(str(params[key]))
        if not path.is_absolute() or path == pipeline_root or pipeline_root in path.parents:
            continue  # "digits", gs://..., or under the mounted root
        if key in OUTPUT_FOLDER_PARAMETERS:
            path.mkdir(parents=True, exist_ok=True)
        if path.exists():
            paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=settings.parameter_help())
    parser.add_argument("pipeline", choices=sorted(PIPELINES))
    parser.add_argument("--config", default=str(settings.CONFIG_DIR / "local.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one pipeline parameter (value parsed as YAML); repeatable. "
                             "Keys per pipeline are listed below")
    parser.add_argument("--pipeline-root", help="where runs are written (default: from the config)")
    parser.add_argument("--no-cache", action="store_true", help="run every task even if cached")
    parser.add_argument("--verbose", action="store_true", help="stream the runner's full output")
    parser.add_argument("--runner", choices=RUNNERS, default="subprocess",
                        help="subprocess (default): tasks run in this virtual environment; "
                             "docker: each task runs in the image (needs a Docker engine)")
    parser.add_argument("--image", help="with --runner docker: the image tasks run in "
                                        "(default: the config's image)")
    args = parser.parse_args(argv)
    try:
        if args.image and args.runner != "docker":
            raise ModelpressError("--image applies to --runner docker only; add --runner docker")
        cfg = settings.load("local", args.config)
        params = cfg.pipeline_parameters(args.pipeline, parse_overrides(args.overrides), fingerprint=True)
        target = replace(cfg.target, image=args.image) if args.image else cfg.target
        pipeline_root = Path(args.pipeline_root or cfg.pipeline_root).resolve()
        runner = None
        if args.runner == "docker":
            local_run.check_docker(target.image)
            runner = local_run.docker_runner(host_paths(params, pipeline_root))
    except ModelpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pipeline = build(args.pipeline, target)  # the one pipeline_parameters read the signature of
    summary = local_run.run(pipeline, args.pipeline, params, str(pipeline_root),
                            cache=not args.no_cache, verbose=args.verbose, runner=runner)
    print(local_run.format_summary(summary))
    if summary["status"] != "SUCCESS":
        print(f"error: {local_run.failure_line(summary)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
