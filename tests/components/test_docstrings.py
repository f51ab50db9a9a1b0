"""Every component documents each input and output, one line apiece in the style of Google Cloud
Pipeline Components: inputs (artifacts and parameters) under `Args:`, outputs (output artifacts,
and `Output` for a returned value) under `Returns:`. KFP copies those lines into the compiled
YAML, which the Vertex UI shows; it reads output descriptions from `Returns:` only."""

import importlib
import inspect
from pathlib import Path

import docstring_parser
import pytest
from kfp.dsl.base_component import BaseComponent

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (ROOT / "components").glob("*.py") if not p.stem.startswith("_"))


def _components():
    for name in MODULES:
        module = importlib.import_module(f"components.{name}")
        yield from (v for v in vars(module).values() if isinstance(v, BaseComponent))


COMPONENTS = list(_components())


def test_every_component_file_defines_a_component():
    assert {c.python_func.__module__.split(".")[-1] for c in COMPONENTS} == set(MODULES)


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.name)
def test_every_input_and_output_is_described(component):
    spec = component.component_spec
    missing = [n for n, s in {**(spec.inputs or {}), **(spec.outputs or {})}.items() if not s.description]
    assert missing == [], f"{component.name}: no docstring line for {missing}"
    first, second = (inspect.getdoc(component.python_func).split("\n") + [""])[:2]
    assert first.endswith(".") and not second, f"{component.name}: the docstring starts with a one-line summary"


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.name)
def test_the_docstring_names_only_real_arguments(component):
    doc = inspect.getdoc(component.python_func)
    # as KFP reads them: inputs from `Args:`, outputs from `Returns:` read as another `Args:`
    inputs = docstring_parser.parse(doc).params
    outputs = docstring_parser.parse(doc.replace("Returns:", "Args:")).params if "Returns:" in doc else []
    documented = [p.arg_name for p in [*inputs, *outputs]]
    signature = inspect.signature(component.python_func)
    real = list(signature.parameters) + (["Output"] if signature.return_annotation is not inspect._empty else [])
    assert sorted(documented) == sorted(real)
