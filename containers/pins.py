"""Print pyproject.toml's pinned dependencies for pip, so images take versions from there only.

    python pins.py [--pyproject PATH] [--constraints] [--replace OLD=NEW ...] [--extra NAME ...]

Default output is a requirements file: every entry of `[project] dependencies`, extras kept
(`tritonclient[http]==2.73.0`). `--constraints` drops the extras, which pip refuses in a
constraints file. `--replace onnxruntime=onnxruntime-gpu` puts another distribution in the
place of one at the same pinned version (the GPU image's ONNX Runtime). Standard library only:
it runs in a bare python image before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib

# name[extras]==version: the only form pyproject.toml uses (no ranges, no markers)
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*==\s*([A-Za-z0-9.+!_-]+)\s*$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(pyproject: str, extras: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(name, extras, version) for every dependency (and those of the optional `extras`, e.g. ray);
    an unpinned one is an error."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    deps = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"{pyproject} has no optional dependencies {extra!r}; it has {sorted(optional)}")
        deps += optional[extra]
    pins = []
    for dep in deps:
        m = PIN.match(dep)
        if not m:
            raise SystemExit(f"{pyproject}: dependency {dep!r} is not pinned as name==version; "
                             "pin it (images install exactly these versions)")
        pins.append((m.group(1), m.group(2) or "", m.group(3)))
    return pins


def render(pins, constraints: bool = False, replace: dict[str, str] | None = None) -> str:
    replace = {canonical(k): v for k, v in (replace or {}).items()}
    unknown = set(replace) - {canonical(name) for name, _, _ in pins}
    if unknown:
        raise SystemExit(f"--replace names {sorted(unknown)}, which pyproject.toml does not pin")
    lines = []
    for name, extras, version in pins:
        if canonical(name) in replace:
            name, extras = replace[canonical(name)], ""
        if constraints:
            name = name.split("[")[0]
            extras = ""
        lines.append(f"{name}{extras}=={version}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pyproject", default="pyproject.toml")
    parser.add_argument("--constraints", action="store_true", help="drop extras (pip -c file)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME",
                        help="also the pins of [project.optional-dependencies] NAME (e.g. ray); repeatable")
    parser.add_argument("--replace", action="append", default=[], metavar="OLD=NEW",
                        help="install NEW (may carry [extras]) at OLD's pinned version; repeatable")
    args = parser.parse_args(argv)
    replace = {}
    for item in args.replace:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            parser.error(f"--replace takes OLD=NEW, got {item!r}")
        replace[old] = new
    sys.stdout.write(render(read_pins(args.pyproject, tuple(args.extra)), args.constraints, replace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
