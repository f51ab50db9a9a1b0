"""Compile every pipeline for every target into KFP YAML.

    python pipelines/compile.py [--target local|vertex|all] [--output-dir DIR] [--image-tag TAG]

Vertex templates name images by an immutable tag: GIT_SHA in configs/vertex.yaml becomes
--image-tag, else `git rev-parse --short HEAD`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    import _bootstrap  # noqa: F401  (sys.path: repository root first)

from modelpress.core.errors import ModelpressError
from pipelines import settings
from pipelines.registry import PIPELINES, build
from pipelines.targets import TARGETS, Target


def compile_pipeline(name: str, target: Target, output_dir: Path) -> Path:
    """Write `<output_dir>/<target>/<name>.yaml` whole or not at all; return its path."""
    from kfp import compiler

    out = output_dir / target.name / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.yaml")
    compiler.Compiler().compile(build(name, target), str(tmp))
    tmp.replace(out)
    return out


def compile_all(targets, output_dir: Path, image_tag: str | None = None) -> list[Path]:
    written = []
    for target_name in targets:
        cfg = settings.load(target_name, image_tag=image_tag)
        written += [compile_pipeline(name, cfg.target, output_dir) for name in PIPELINES]
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--output-dir", type=Path, default=settings.ROOT / "build" / "pipelines")
    parser.add_argument("--image-tag", help="replaces GIT_SHA in the vertex images (default: git HEAD)")
    args = parser.parse_args(argv)
    targets = TARGETS if args.target == "all" else (args.target,)
    try:
        written = compile_all(targets, args.output_dir, args.image_tag)
    except ModelpressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
