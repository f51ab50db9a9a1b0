"""Every command in the README (and docs/) is run here as written, or names why it cannot run on
this machine and which test covers it instead. A new code block nobody classified fails the test."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modelpress.deploy import repository

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *(ROOT / "docs" / f"{name}.md" for name in ("serving", "vertex", "text", "training",
                                                                            "development", "edge", "model-cards",
                                                                            "batch"))]  # batch after vertex's
# retraining block, which deploys the digits model it scores

# A block whose first line starts with one of these is not run here: why, and what tests it.
NOT_HERE = {
    "make demo": "the optimise pipeline on the demo configs (make demo, make demo-text); tests/e2e/"
                 "test_optimise_run.py and test_text_runs.py run them smaller",
    "make images": "needs a Docker engine and a registry; tests/test_containers.py reads the Makefile and Dockerfiles",
    "PROJECT=": "Google Cloud set-up; unreachable from here",
    "sed -i": "edits your configs/vertex.yaml for your project",
    "gcloud storage cp": "uploads to Cloud Storage; tests/pipelines/test_submit.py sends submissions to fakes",
    "git commit": "commits your work, then pushes images (Docker)",
    "make serve": "run below as the command it stands for, on a free port",
    ".venv/bin/python pipelines/run_local.py optimise --set edge_export": "a 2.5-minute optimise run; "
        "tests/components/test_export_edge.py runs the export-edge step in kfp.local",
    "curl -s localhost:8000/v2/models/digits/card": "tests/serving/test_model_card_route.py asks a real server "
                                                    "for cards the same three ways",
    "make mirror-triton": "pulls from NVIDIA's registry and pushes to yours (Docker); tests/test_containers.py "
                          "checks the commands it runs",
    "make bench-serving-peers": "minutes of measurement in its own venv; tests/test_benchmark_peers.py checks the "
                                "peers start and answer like a bare ONNX Runtime session",
    ".venv/bin/modelpress tune-serving": "minutes of measurement on model_repository after make demo; "
                                         "tests/serving/test_tune_serving.py runs it on a tiny model with a small grid",
}
# single lines inside run blocks that need Google Cloud: covered by tests/pipelines/test_submit.py's fakes
NEEDS_GOOGLE = re.compile(r"pipelines/submit\.py (?!.*--dry-run)")


def blocks() -> list[tuple[str, str, str]]:
    out = []
    for doc in DOCS:
        for lang, body in re.findall(r"```(\w*)\n(.*?)```", doc.read_text(), re.S):
            if lang in ("bash", "python"):  # a block inside a list item is indented
                out.append((doc.name, lang, textwrap.dedent(body)))
    return out


def _shell(body: str, tmp: Path, port: int = 0, mport: int = 0) -> str:
    """The block as this checkout runs it: the project's interpreter, scripts and ports."""
    body = body.replace(".venv/bin/python", sys.executable).replace(" pipelines/", f" {ROOT}/pipelines/")
    body = body.replace("localhost:8000", f"127.0.0.1:{port}").replace("localhost:8002", f"127.0.0.1:{mport}")
    lines = [ln for ln in body.splitlines() if not NEEDS_GOOGLE.search(ln)]
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=tmp, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, body + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _python(body: str, tmp: Path, port: int = 0, grpc_port: int = 0) -> str:
    body = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}")
    proc = subprocess.run([sys.executable, "-c", body], cwd=tmp,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, body + proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_every_block_is_run_or_says_why_not():
    for doc, lang, body in blocks():
        first = body.strip().splitlines()[0]
        assert lang == "python" or any(first.startswith(k) for k in NOT_HERE) or \
            first.startswith((".venv/bin/python", "curl ")), f"{doc}: unclassified block starting {first!r}"


def test_the_readme_commands_run_as_written(tmp_path):
    from tests.serving.conftest import start_server, stop_server

    run_blocks = [(d, lang, b) for d, lang, b in blocks()
                  if not any(b.strip().startswith(k) for k in NOT_HERE)]
    pipelines = [b for _, lang, b in run_blocks if lang == "bash" and b.startswith(".venv/bin/python pipelines/")]
    outputs = [_shell(body, tmp_path) for body in pipelines]  # training x3, --help, compile, dry run, retraining
    assert any("--set keys" in out and "optimise: " in out for out in outputs)  # --help lists them
    assert any('"method": "PipelineService.CreatePipelineJob"' in out for out in outputs)  # the dry run
    assert (ROOT / "build" / "pipelines" / "vertex" / "optimise.yaml").exists()  # compile --target all
    summaries = sorted(tmp_path.glob("local_outputs/training-*/summary.json"))
    assert len(summaries) >= 3 and all(json.loads(p.read_text())["status"] == "SUCCESS" for p in summaries)
    iris = json.loads(summaries[-1].read_text())  # the iris CSV made by the README's own one-liner
    assert iris["parameters"]["source"] == str(tmp_path / "iris.csv")
    assert repository.versions(tmp_path / "model_repository", "digits")  # retraining deployed

    # serve what the README's training run exported, as the demo's `digits`
    first = json.loads(summaries[0].read_text())
    onnx_dir = next(t for t in first["tasks"] if t["task"] == "export-onnx")["artifacts"]["onnx_model"]
    repository.deploy(onnx_dir, tmp_path / "served", "digits")
    repository.deploy(_text_model(tmp_path), tmp_path / "served", "reviews")  # what `make demo-text` deploys
    server = start_server(tmp_path / "served", tmp_path)
    try:
        port, mport = server.url.rsplit(":", 1)[1], server.metrics_url.split(":")[2].split("/")[0]
        for _, lang, body in run_blocks:
            if lang == "bash" and body.startswith("curl "):
                out = _shell(body, tmp_path, int(port), int(mport))
                assert '"error"' not in out and '"label"' in out  # class names came back
                if "/v2/models/reviews/" in body:  # raw strings in
                    assert '"truncated"' in out and '"BYTES"' in out
                else:
                    assert "nv_inference_count" in out
        python = [b for d, lang, b in run_blocks if lang == "python" and "tritonclient" in b]
        printed = _python(python[0], tmp_path, int(port))
        labels = re.findall(r"'(\d)'", printed.split("]")[0])
        truth = printed.split("]")[1].strip(" [\n").split()
        assert sum(a == b for a, b in zip(labels, truth)) >= 7, printed  # raw digits in, right classes out
        text_snippet = next(b for b in python if 'client.infer("reviews"' in b)
        assert "'truncated': []" in _python(text_snippet, tmp_path, int(port))
        grpc_snippets = [b for b in python if "tritonclient.grpc" in b]
        assert len(grpc_snippets) >= 2  # README and docs/serving.md
        for body in grpc_snippets:  # the same digits over gRPC: class names back
            assert re.search(r"\[b?'\d'", _python(body, tmp_path, int(port), server.grpc_port)), body
    finally:
        stop_server(server)


def _text_model(tmp: Path) -> str:
    """A small text classifier made the way the optimise pipeline makes one: reviews -> dataset ->
    bert (untrained: the commands only need it to answer) -> the export step's ONNX artifact."""
    from modelpress.data.text import make_text_dataset, write_reviews
    from modelpress.export.text_artifact import export_text_step
    from modelpress.models import text

    csv = write_reviews(str(tmp / "texts.csv"), 200)
    schema = make_text_dataset(csv, str(tmp / "text-dataset"), vocab_size=200, max_length=32, log=lambda _: None)
    model = text.bert_from_config(schema["vocab_size"], 2, layers=1, hidden=32, heads=2, intermediate=64,
                                  max_position=32)
    info = text.text_info(model, text.BERT_CONFIG, class_names=schema["class_names"], max_length=32)
    text.save_text_model(model, str(tmp / "text-dataset" / "tokenizer"), str(tmp / "text-model"), info)
    export_text_step(str(tmp / "text-model"), str(tmp / "text-dataset"), str(tmp / "text-onnx"), log=lambda _: None)
    return str(tmp / "text-onnx")


@pytest.mark.slow
def test_the_readme_distributed_snippet_runs(tmp_path):
    snippet = next(b for _, lang, b in blocks() if lang == "python" and "distributed.train" in b)
    (tmp_path / "ddp.py").write_text(snippet)
    proc = subprocess.run([sys.executable, "ddp.py"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "build" / "ddp-model" / "weights.safetensors").exists()
