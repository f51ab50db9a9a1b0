"""The library's packages form layers: each imports only the ones below it (read with `ast`, so
imports inside functions count too), nothing in it imports KFP or the pipeline layers above."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "modelpress"
# lowest first; a package may import itself and the packages before it
LAYERS = ["core", "data", "models", "evaluation", "training", "export", "compression", "deploy", "selection",
          "serving", "batch", "loadtest"]
TOP = {"__init__", "__main__", "cli"}  # the `modelpress` command sits above every stage


def _package(path: Path, library: Path = LIBRARY) -> str:
    rel = path.relative_to(library)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path, library: Path = LIBRARY) -> list[tuple[int, str]]:
    """(line, absolute dotted module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = ["modelpress", *path.relative_to(library).parts[:-1]]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] if base in ("modelpress",) else [base]
            out += [(node.lineno, n) for n in names]
    return out


def _library_files():
    return sorted(p for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_belongs_to_a_layer():
    for path in _library_files():
        assert _package(path) in LAYERS or _package(path) in TOP, f"{path}: not in a known package"


def problems(path: Path, library: Path = LIBRARY) -> list[str]:
    mine, found = _package(path, library), []
    for line, module in _imports(path, library):
        top = module.split(".")[0]
        if top in ("kfp", "google_cloud_pipeline_components", "pipelines", "components"):
            found.append(f"{path}:{line} imports {module}: the library never imports KFP or the layers above it")
        if top != "modelpress" or mine in TOP:
            continue
        parts = module.split(".")
        if len(parts) == 1 or parts[1] == "__version__":
            continue
        theirs = parts[1]
        if theirs not in LAYERS:
            found.append(f"{path}:{line} imports {module}, which is in no layer")
        elif LAYERS.index(theirs) > LAYERS.index(mine):
            found.append(f"{path}:{line}: {mine} imports {module}, a package above it ({' < '.join(LAYERS)})")
    return found


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_import_and_no_kfp(path):
    assert problems(path) == []


def test_no_library_file_over_400_lines():
    for folder in ("modelpress", "pipelines", "components"):
        for path in (ROOT / folder).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"


def test_the_walk_catches_upward_relative_and_kfp_imports(tmp_path):
    library = tmp_path / "modelpress"
    (library / "data").mkdir(parents=True)
    probe = library / "data" / "probe.py"
    probe.write_text("from modelpress.selection import decision\n"
                     "def f():\n    from ..serving import app\n    import kfp\n"
                     "from modelpress.core import errors\nfrom . import sources\n")
    found = problems(probe, library)
    assert len(found) == 3 and sum("a package above it" in p for p in found) == 2 and "KFP" in found[2]
