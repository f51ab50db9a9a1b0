"""The Dockerfiles, .dockerignore and `make images`, checked without a Docker engine.

What a build would discover late is checked here: COPY sources that are missing or kept out
of the build context, entrypoints that do not exist, versions that drift from pyproject.toml,
root users, unpinned bases. The serve image's package subset is checked by serving a model
with every other installed distribution made unimportable.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from docker.utils.build import PatternMatcher
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("cpu", "gpu", "serve")
COMPONENT_IMAGES = ("cpu", "gpu")  # KFP gives the command; an ENTRYPOINT would swallow it
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _load_pins_script():
    spec = importlib.util.spec_from_file_location("container_pins", ROOT / "containers" / "pins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pins_script = _load_pins_script()
PINS = {canonicalize_name(name): version
        for name, _, version in pins_script.read_pins(str(ROOT / "pyproject.toml"))}


def instructions(image: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, as Docker reads them: comments out, continuations joined."""
    out, pending = [], ""
    for line in (ROOT / "containers" / image / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        if pending.strip():
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages(image: str) -> list[list[tuple[str, str]]]:
    """Instructions grouped per build stage (each starts at a FROM)."""
    out = []
    for word, rest in instructions(image):
        if word == "FROM":
            out.append([])
        out[-1].append((word, rest))
    return out


def args_of(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def dockerignore() -> PatternMatcher:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return PatternMatcher([ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")])


@pytest.mark.parametrize("image", IMAGES)
def test_copy_sources_exist_and_reach_the_build_context(image):
    ignored = dockerignore()
    copies = [args_of(rest) for word, rest in instructions(image) if word in ("COPY", "ADD")]
    local = [a for a in copies if not any(x.startswith("--from") for x in a)]
    assert local, "an image that copies nothing from the repository cannot carry the code"
    for args in local:
        for source in [x for x in args if not x.startswith("--")][:-1]:
            path = ROOT / source
            assert path.exists(), f"{image}: COPY {source}: no such path in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
            assert files, f"{image}: COPY {source} copies no Python file"
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                assert not ignored.matches(rel), f"{image}: COPY {source}: .dockerignore keeps {rel} out of the build"


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = dockerignore()
    for path in (".venv", ".venv/bin/python", "build", "build/pipelines/local/training.yaml",
                 "local_outputs", "local_outputs/training-1/summary.json", ".git", ".git/HEAD",
                 "model_repository/digits/1/model.onnx", "modelpress/__pycache__/cli.cpython-311.pyc"):
        assert ignored.matches(path), f"{path} would be sent to the Docker engine"
    for path in ("pyproject.toml", "modelpress/cli.py", "components/train.py", "containers/pins.py"):
        assert not ignored.matches(path), f"{path} is needed by the images"


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_exact_bases_and_non_root_user(image):
    all_stages = stages(image)
    assert len(all_stages) >= 2, f"{image}: build tools and caches stay in a builder stage"
    names = set()
    for stage in all_stages:
        base, *rest = shlex.split(stage[0][1])
        if rest[:1] == ["AS"] or rest[:1] == ["as"]:
            names.add(rest[1])
        if base in names:
            continue
        ref = base.partition("@")[0]  # a digest may follow the tag
        repo, _, tag = ref.rpartition(":")
        assert repo and tag and tag != "latest", f"{image}: base {base} is not pinned to a version tag"
        if repo == "python":
            version = re.match(r"(\d+\.\d+\.\d+)-", tag)
            assert version, f"{image}: python base {tag} names no exact python version"
            assert version.group(1) in SpecifierSet(PYPROJECT["project"]["requires-python"]), \
                f"{image}: python {version.group(1)} outside requires-python"
        else:
            assert re.search(r"\d+\.\d+", tag), f"{image}: base {base} is not pinned to a version"
    final = all_stages[-1]
    assert any(w == "COPY" and "--from=" in r for w, r in final), f"{image}: final stage copies no build output"
    users = [r.split(":")[0] for w, r in final if w == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{image}: the final stage must end as a non-root USER"


def test_images_share_one_python_base():
    bases = {shlex.split(rest)[0] for image in IMAGES for word, rest in instructions(image)
             if word == "FROM" and rest.startswith("python:")}
    assert len(bases) == 1, f"one python for every image and stage, got {sorted(bases)}"


@pytest.mark.parametrize("image", IMAGES)
def test_versions_named_in_dockerfiles_match_pyproject(image):
    text = " ".join(rest for _, rest in instructions(image))
    for name, version in re.findall(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([0-9][^\s\"';&|]*)", text):
        pinned_as = canonicalize_name(name).removesuffix("-gpu")
        assert PINS.get(pinned_as) == version, \
            f"{image}: {name}=={version}, but pyproject.toml pins {pinned_as} at {PINS.get(pinned_as)}"


def _pins_invocations(image: str) -> list[list[str]]:
    return [shlex.split(m) for word, rest in instructions(image) if word == "RUN"
            for m in re.findall(r"python3? pins\.py([^>&|;]*)", rest)]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_requirements_come_from_pyproject(image, capsys):
    calls = _pins_invocations(image)
    assert calls, f"{image}: versions must come from pyproject.toml through containers/pins.py"
    for args in calls:
        assert pins_script.main([*args, "--pyproject", str(ROOT / "pyproject.toml")]) == 0
        lines = capsys.readouterr().out.split()
        got = {}
        for line in lines:
            req = Requirement(line)
            got[canonicalize_name(req.name)] = (str(req.specifier), req.extras)
            if "--constraints" in args:
                assert not req.extras, f"{line}: pip refuses extras in a constraints file"
        extras = {e for flag, e in zip(args, args[1:]) if flag == "--extra"}
        extra_pins = {canonicalize_name(n): v for n, _, v in pins_script.read_pins(str(ROOT / "pyproject.toml"),
                                                                                  tuple(extras))}
        if image == "gpu":
            assert "onnxruntime" not in got, "onnxruntime beside onnxruntime-gpu breaks both"
            assert got["onnxruntime-gpu"][0] == f"=={PINS['onnxruntime']}"
            got.pop("onnxruntime-gpu")
            expected = {k: v for k, v in extra_pins.items() if k != "onnxruntime"}
        else:
            expected = extra_pins
        assert {k: v[0] for k, v in got.items()} == {k: f"=={v}" for k, v in expected.items()}


def test_pins_script_refuses_unpinned_and_unknown(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["numpy==2.4.6", "torch>=2"]\n')
    with pytest.raises(SystemExit, match="'torch>=2' is not pinned"):
        pins_script.read_pins(str(pyproject))
    pyproject.write_text('[project]\ndependencies = ["numpy==2.4.6"]\n')
    with pytest.raises(SystemExit, match="does not pin"):
        pins_script.main(["--pyproject", str(pyproject), "--replace", "onnxruntime=onnxruntime-gpu"])


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_program_exists(image):
    entry = [args_of(r) for w, r in instructions(image) if w in ("ENTRYPOINT", "CMD")]
    if image in COMPONENT_IMAGES:
        assert not entry, f"{image}: KFP runs its own command; docker keeps an ENTRYPOINT in front of it"
        return
    assert entry and entry[0][:2] == ["modelpress", "serve"], entry
    scripts = PYPROJECT["project"]["scripts"]
    assert entry[0][0] in scripts, f"{entry[0][0]} is not a console script in pyproject.toml"
    module, _, attr = scripts[entry[0][0]].partition(":")
    main = getattr(importlib.import_module(module), attr)
    with pytest.raises(SystemExit) as exit_info:
        main([*entry[0][1:], "--help"])
    assert exit_info.value.code == 0


def test_serve_image_exposes_the_vertex_port():
    final = stages("serve")[-1]
    exposed = {p for w, r in final if w == "EXPOSE" for p in r.split()}
    env = " ".join(r for w, r in final if w == "ENV")
    assert {"8080", "8001", "8002"} <= exposed and "AIP_HTTP_PORT=8080" in env  # HTTP, gRPC, metrics


def test_make_images_builds_and_pushes_three_tagged_images():
    proc = subprocess.run(["make", "-n", "images", "TAG=abc", "REGISTRY=r"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    commands = [ln for ln in proc.stdout.splitlines() if ln.startswith("docker ")]
    assert commands == [cmd for name in IMAGES for cmd in (
        f"docker build --platform linux/amd64 --file containers/{name}/Dockerfile --tag r/{name}:abc .",
        f"docker push r/{name}:abc")]


@pytest.mark.parametrize("args, message", [
    (["TAG=latest", "REGISTRY=r"], "TAG=latest is refused"),
    (["TAG=abc"], "names no project"),   # the default REGISTRY is a placeholder
])
def test_make_images_refuses(args, message):
    proc = subprocess.run(["make", "-n", "images", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode != 0 and message in proc.stderr
    assert "docker" not in proc.stdout


def test_make_mirror_triton_copies_a_release_into_the_registry():
    proc = subprocess.run(["make", "-n", "mirror-triton", "REGISTRY=r", "TRITON_TAG=25.01-py3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("docker ")] == [
        "docker pull --platform linux/amd64 nvcr.io/nvidia/tritonserver:25.01-py3",
        "docker tag nvcr.io/nvidia/tritonserver:25.01-py3 r/tritonserver:25.01-py3",
        "docker push r/tritonserver:25.01-py3"]
    refused = subprocess.run(["make", "-n", "mirror-triton", "REGISTRY=r", "TRITON_TAG=latest"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0 and "TRITON_TAG=latest is refused" in refused.stderr


# --- the serve image's package subset, exercised without Docker -----------------------------

def _serve_packages() -> list[str]:
    """The names the serve Dockerfile installs under the pyproject constraints."""
    for word, rest in instructions("serve"):
        tokens = shlex.split(rest)
        if word == "RUN" and "--constraint" in tokens:
            start = tokens.index("--constraint") + 2
            end = next((i for i in range(start, len(tokens)) if tokens[i] in ("&&", ";")), len(tokens))
            return tokens[start:end]
    raise AssertionError("serve Dockerfile installs no constrained package list")


def _closure(requirements: list[str]) -> set[str]:
    """Distributions pip would install for `requirements` (as installed here), by name."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for spec in md.distribution(req.name).requires or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(dep)
    return {name for name, _ in seen}


BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class NotInServeImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the serve image)", name=name)
sys.meta_path.insert(0, NotInServeImage())
from modelpress.cli import main
sys.exit(main(["serve", "--metrics-port", "0", "--grpc-port", "0"]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_image_predict(repo: Path, instances: list) -> list:
    """Vertex's predict route of `modelpress serve` on `repo`, run with only the serve image's packages
    importable (torch, kfp, scikit-learn, transformers raise ModuleNotFoundError)."""
    packages = _serve_packages()
    assert not {"torch", "kfp", "transformers"} & {canonicalize_name(Requirement(p).name) for p in packages}
    allowed = _closure(packages) | {"modelpress", "pip", "setuptools"}  # a venv brings the last two
    blocked = {module for module, dists in md.packages_distributions().items()
               if not any(canonicalize_name(d) in allowed for d in dists)}
    assert {"torch", "kfp", "sklearn", "transformers"} <= blocked
    port = _free_port()
    env = {**os.environ, "AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/health",
           "AIP_PREDICT_ROUTE": "/predict", "AIP_STORAGE_URI": str(repo)}
    server = subprocess.Popen([sys.executable, "-c", BLOCKER, ",".join(sorted(blocked))], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if urllib.request.urlopen(f"{base}/health", timeout=1).status == 200:
                    break
            except OSError:
                assert time.time() < deadline, "server not healthy after 30 s"
                time.sleep(0.1)
        request = urllib.request.Request(f"{base}/predict", data=json.dumps({"instances": instances}).encode(),
                                         headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=10).read())["predictions"]
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_serve_image_packages_serve_a_model_without_torch(tmp_path, mlp_onnx_dir, digits_dir):
    from modelpress import data
    from modelpress.deploy import repository

    repository.deploy(mlp_onnx_dir, str(tmp_path / "repo"), "digits")
    rows = data.load_dataset(digits_dir).test.x[:3]
    predictions = _serve_image_predict(tmp_path / "repo", rows.tolist())
    # each prediction: the logits and the class name (the model's meta.json has class names)
    assert len(predictions) == 3 and all(len(p["logits"]) == 10 for p in predictions)
    assert all(p["label"] in [str(i) for i in range(10)] for p in predictions)


def test_serve_image_packages_serve_a_text_model(tmp_path):
    """Tokenising needs `tokenizers` only: a text model answers raw strings in the serve image."""
    from modelpress.deploy import repository
    from tests.e2e.test_readme_commands import _text_model

    repository.deploy(_text_model(tmp_path), str(tmp_path / "repo"), "reviews")
    predictions = _serve_image_predict(tmp_path / "repo", [{"text": "The kettle is great."}, "Returning it."])
    assert len(predictions) == 2 and all(len(p["logits"]) == 2 and p["label"] in ("negative", "positive")
                                         and p["truncated"] is False for p in predictions)


def test_the_modules_each_image_imports_at_build_time_exist():
    # a RUN python -c "import modelpress.x" that names a moved module would fail only at `make images`
    for dockerfile in sorted((ROOT / "containers").glob("*/Dockerfile")):
        names = re.findall(r"\bmodelpress(?:\.\w+)+", dockerfile.read_text())
        for name in names:
            assert importlib.util.find_spec(name) is not None, f"{dockerfile}: {name} does not exist"
