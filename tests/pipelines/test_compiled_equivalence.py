"""Compiled templates keep their shape: tasks, parameters, images, resources and caching per target.

compiled_reference.json was written from the templates the code compiled before issue 11 split
the targets into modules; a refactoring must leave it unchanged. After a deliberate change to a
pipeline, rewrite it with

    .venv/bin/python -m tests.pipelines.test_compiled_equivalence [DIR]

(DIR: templates from `pipelines/compile.py --target all --image-tag abc1234 --output-dir DIR`;
without it they are compiled afresh) and review the diff.
"""

import json
import sys
from pathlib import Path

import pytest
import yaml

REFERENCE = Path(__file__).with_name("compiled_reference.json")
IMAGE_TAG = "abc1234"  # what GIT_SHA becomes, so that the reference does not follow git HEAD
# Inputs of the GCPC custom-job wrapper that carry our settings (the rest are GCPC's defaults).
JOB_INPUTS = ("display_name", "service_account", "labels")


def _source(spec: dict):
    """Where a task parameter comes from, as a short string (or the constant itself)."""
    if "runtimeValue" in spec:
        return spec["runtimeValue"]["constant"]
    if "componentInputParameter" in spec:
        return f"<input {spec['componentInputParameter']}>"
    if "taskOutputParameter" in spec:
        out = spec["taskOutputParameter"]
        return f"<{out['producerTask']}.{out['outputParameterKey']}>"
    return f"<{sorted(spec)[0]}>"


def _worker_pools(pools: list) -> list:
    return [{"replica_count": p["replica_count"], "machine_spec": p["machine_spec"],
             "image_uri": p["container_spec"]["image_uri"]} for p in pools]


def _tasks(spec: dict, dag: dict, prefix: str, out: dict) -> None:
    executors = spec["deploymentSpec"]["executors"]
    for name, task in sorted(dag["tasks"].items()):
        component = spec["components"][task["componentRef"]["name"]]
        entry = {
            "component": task["componentRef"]["name"],
            "cache": task.get("cachingOptions", {}).get("enableCache", False),
            "parameters": {k: _source(v) for k, v in sorted(task.get("inputs", {}).get("parameters", {}).items())},
            "artifacts": sorted(task.get("inputs", {}).get("artifacts", {})),
        }
        if "triggerPolicy" in task:
            entry["condition"] = task["triggerPolicy"]["condition"]
        if "iteratorPolicy" in task or "parameterIterator" in task:
            entry["iterator"] = True
        if "executorLabel" in component and "importer" in executors[component["executorLabel"]]:
            entry["importer"] = executors[component["executorLabel"]]["importer"]
        elif "executorLabel" in component:
            container = executors[component["executorLabel"]]["container"]
            entry["image"] = container["image"]
            entry["resources"] = container.get("resources", {})
            defaults = {k: v.get("defaultValue") for k, v in
                        component.get("inputDefinitions", {}).get("parameters", {}).items()}
            if "worker_pool_specs" in defaults:  # a Vertex custom job: what its worker pools run
                entry["worker_pools"] = _worker_pools(defaults["worker_pool_specs"])
                entry["job"] = {k: defaults.get(k) for k in JOB_INPUTS}
        out[prefix + name] = entry
        if "dag" in component:
            _tasks(spec, component["dag"], f"{prefix}{name}/", out)


def summarise(spec: dict) -> dict:
    """The parts of a compiled template that a refactoring must not change."""
    inputs = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    tasks: dict = {}
    _tasks(spec, spec["root"]["dag"], "", tasks)
    return {"inputs": {k: [v["parameterType"], v.get("defaultValue")] for k, v in sorted(inputs.items())},
            "tasks": tasks}


def compile_summaries(output_dir: Path) -> dict:
    from pipelines.compile import compile_all
    from pipelines.targets import TARGETS

    written = compile_all(TARGETS, output_dir, image_tag=IMAGE_TAG)
    return read_summaries(written)


def read_summaries(paths) -> dict:
    out: dict = {}
    for path in sorted(paths):
        out.setdefault(path.parent.name, {})[path.stem] = summarise(yaml.safe_load(path.read_text()))
    return out


@pytest.fixture(scope="module")
def summaries(tmp_path_factory):
    return compile_summaries(tmp_path_factory.mktemp("equivalence"))


def test_compiled_templates_match_the_reference(summaries):
    reference = json.loads(REFERENCE.read_text())
    assert sorted(summaries) == sorted(reference)
    for target, pipelines in reference.items():
        assert sorted(summaries[target]) == sorted(pipelines), target
        for name, expected in pipelines.items():
            got = summaries[target][name]
            assert got["inputs"] == expected["inputs"], f"{target}/{name}: pipeline parameters"
            assert sorted(got["tasks"]) == sorted(expected["tasks"]), f"{target}/{name}: task names"
            for task, want in expected["tasks"].items():
                assert got["tasks"][task] == want, f"{target}/{name}: task {task}"


if __name__ == "__main__":  # rewrite the reference (see the module docstring)
    import tempfile

    if len(sys.argv) > 1:
        data = read_summaries(Path(sys.argv[1]).glob("*/*.yaml"))
    else:
        data = compile_summaries(Path(tempfile.mkdtemp()))
    REFERENCE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
