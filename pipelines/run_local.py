"""Run a pipeline locally through kfp.local (SubprocessRunner in this virtual environment).

    python pipelines/run_local.py <pipeline> [--config configs/local.yaml] [--set key=value ...]

Writes summary.json (per task: status, seconds, parameters, metrics, artifact paths) and
run.log in the run's folder under the config's pipeline_root, and prints the summary.
"""

from __future__ import annotations

import argparse
import sys

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (sys.path: repository root first)

from modelpress.config import parse_overrides
from modelpress.errors import ModelpressError
from pipelines import local_run, settings
from pipelines.registry import PIPELINES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", choices=sorted(PIPELINES))
    parser.add_argument("--config", default=str(settings.CONFIG_DIR / "local.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one pipeline parameter (value parsed as YAML); repeatable")
    parser.add_argument("--pipeline-root", help="where runs are written (default: from the config)")
    parser.add_argument("--no-cache", action="store_true", help="run every task even if cached")
    parser.add_argument("--verbose", action="store_true", help="stream the runner's full output")
    args = parser.parse_args(argv)
    try:
        cfg = settings.load("local", args.config)
        params = cfg.pipeline_parameters(args.pipeline, parse_overrides(args.overrides))
    except ModelpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pipeline = PIPELINES[args.pipeline](cfg.target)
    summary = local_run.run(pipeline, args.pipeline, params, args.pipeline_root or cfg.pipeline_root,
                            cache=not args.no_cache, verbose=args.verbose)
    print(local_run.format_summary(summary))
    return 0 if summary["status"] == "SUCCESS" else 1


if __name__ == "__main__":
    sys.exit(main())
