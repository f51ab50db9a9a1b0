"""Compile every pipeline for every target into KFP YAML.

    python pipelines/compile.py [--target local|vertex|all] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (sys.path: repository root first)

from modelpress.errors import ModelpressError
from pipelines import settings
from pipelines.registry import PIPELINES
from pipelines.targets import TARGETS


def compile_all(targets, output_dir: Path) -> list[Path]:
    from kfp import compiler

    written = []
    for target_name in targets:
        cfg = settings.load(target_name)
        for name, factory in PIPELINES.items():
            out = output_dir / target_name / f"{name}.yaml"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.stem}.tmp.yaml")
            compiler.Compiler().compile(factory(cfg.target), str(tmp))
            tmp.replace(out)
            written.append(out)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--output-dir", type=Path, default=settings.ROOT / "build" / "pipelines")
    args = parser.parse_args(argv)
    targets = TARGETS if args.target == "all" else (args.target,)
    try:
        written = compile_all(targets, args.output_dir)
    except ModelpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
