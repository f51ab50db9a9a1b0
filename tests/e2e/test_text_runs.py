"""Text end to end, as a user runs it: a CSV of texts through the optimise pipeline in kfp.local,
from scratch (a bert built from model_args) and from a Hugging Face save_pretrained folder; the
deployed version served to tritonclient as raw strings; the mistakes a user makes stopped with
one clear line; both starts compiled for Vertex AI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelpress.data.text import write_reviews
from modelpress.data.tokenizer import load_tokenizer, tokenize
from modelpress.deploy import repository
from modelpress.export import runtime
from tests.e2e.test_byom_runs import _vertex_request
from tests.serving.conftest import start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
TEXT = ["--set", "text_column=text", "--set", "vocab_size=300", "--set", "max_length=48",
        "--set", "window_seconds=0.05", "--set", "max_windows=3", "--set", "calibration_samples=32",
        "--set", "accuracy_floor=0.5", "--set", "tolerance=0.05", "--set", "batch_size=32"]
TINY_BERT = {"layers": 2, "hidden": 32, "heads": 2, "intermediate": 64}
STUDENT = ["--set", "student_architecture=from-teacher", "--set", "student_args={layers: 1}"]


def _run_local(tmp_path, *args, name="reviews"):
    return subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_local.py"), "optimise", *TEXT, *args,
                           "--set", f"repository={tmp_path / 'repo'}", "--set", f"model_name={name}",
                           "--pipeline-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=900)


def _succeeded(tmp_path, proc) -> tuple[dict, dict]:
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    summary = json.loads(sorted((tmp_path / "runs").glob("optimise-*/summary.json"))[-1].read_text())
    tasks = {t["task"]: t for t in summary["tasks"]}
    bench = json.loads(Path(tasks["benchmark"]["artifacts"]["results"]).read_text())
    return tasks, {r["name"]: r for r in bench["variants"]}


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    return Path(write_reviews(str(tmp_path_factory.mktemp("data") / "reviews.csv"), 600, seed=1))


def test_from_scratch_every_step_then_served_as_text(tmp_path, reviews):
    proc = _run_local(tmp_path, "--set", f"source={reviews}", "--set", "architecture=bert",
                      "--set", f"model_args={json.dumps(TINY_BERT)}", "--set", "epochs=3",
                      "--set", "learning_rate=0.002", *STUDENT, "--set", "distil_epochs=1",
                      "--set", "prune_finetune_epochs=1", "--set", "quantisation_methods=[fused, dynamic-int8]")
    tasks, rows = _succeeded(tmp_path, proc)
    assert {"torch eager fp32", "onnx fp32", "pruned fp32", "student fp32", "fused", "dynamic-int8",
            "pruned dynamic-int8", "student fused"} <= set(rows)
    lengths = rows["onnx fp32"]["sequence_lengths"]
    assert lengths["max_length"] == 48 and 2 <= lengths["p95"] <= 48
    for row in rows.values():  # every variant scored on the same test texts and timed at both lengths
        assert row["accuracy"] is not None and row["latency_ms"]["p50"] > 0 and row["latency_max_length_ms"]["p50"] > 0
    assert tasks["prune"]["metrics"]["heads_after"] < tasks["prune"]["metrics"]["heads_before"]
    assert tasks["distil"]["metrics"]["student_layers"] == 1

    version = repository.latest(tmp_path / "repo", "reviews")
    meta = json.loads((version / "meta.json").read_text())
    assert meta["input"]["kind"] == "text" and (version / "tokenizer" / "tokenizer.json").is_file()
    config = repository.read_config(tmp_path / "repo", "reviews")
    assert [i.name for i in config.input][:2] == ["input_ids", "attention_mask"]  # what Triton serves

    import tritonclient.http as httpclient

    server = start_server(tmp_path / "repo", tmp_path)
    try:
        client = httpclient.InferenceServerClient(server.host)
        texts = ["The battery is great. Would buy again.", "Returning it. The fit is awful.",
                 "I got the kettle. " + "The price is not terrible. " * 30]  # the last is cut at max_length
        inp = httpclient.InferInput("text", [3, 1], "BYTES")
        inp.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object).reshape(3, 1))
        result = client.infer("reviews", [inp])
        logits, labels = result.as_numpy("logits"), result.as_numpy("label")
        assert logits.shape == (3, 2) and [x.decode() for x in labels] == [
            meta["class_names"][i] for i in logits.argmax(1)]
        assert result.get_response()["parameters"]["truncated"] == [2]
        ids = tokenize(texts, load_tokenizer(version / "tokenizer"), 48)
        feed = {k: ids[k] for k in meta["token_inputs"]}
        np.testing.assert_allclose(logits, runtime.session(version).run(["logits"], feed)[0], atol=1e-4)
    finally:
        stop_server(server)


def _save_pretrained(folder: Path, texts: list[str]) -> None:
    """What a user brings: a tiny BERT classifier and its fast tokenizer, saved with save_pretrained."""
    from transformers import PreTrainedTokenizerFast

    from modelpress.data.tokenizer import train_tokenizer
    from modelpress.models.text import bert_from_config

    tok = train_tokenizer(texts, 300)
    model = bert_from_config(tok.get_vocab_size(), 2, layers=1, hidden=32, heads=2, intermediate=64, max_position=64)
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    model.save_pretrained(folder, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(folder)


# slow: ~30 s; tests/text_models load hf: folders, the from-scratch run covers the pipeline
@pytest.mark.slow
def test_from_a_save_pretrained_folder_as_it_is(tmp_path, reviews):
    import csv

    with open(reviews, newline="") as f:
        _save_pretrained(tmp_path / "my-bert", [row["text"] for row in csv.DictReader(f)][:200])
    proc = _run_local(tmp_path, "--set", f"source={reviews}", "--set", "architecture=hf:my-bert",
                      "--set", "epochs=0", "--set", "steps=[quantise]", "--set", "quantisation_methods=[dynamic-int8]",
                      "--set", "accuracy_floor=0", name="mybert")
    tasks, rows = _succeeded(tmp_path, proc)
    assert set(rows) == {"torch eager fp32", "onnx fp32", "dynamic-int8"}
    schema = json.loads((Path(tasks["make-dataset"]["artifacts"]["dataset"]) / "schema.json").read_text())
    assert schema["tokenizer"]["source"] == str(tmp_path / "my-bert")  # the model's own tokenizer, not a new one
    assert "as-is" in proc.stdout and tasks["train"]["metrics"]["epochs_run"] == 0
    assert (repository.latest(tmp_path / "repo", "mybert") / "tokenizer" / "tokenizer.json").is_file()


@pytest.fixture
def bad_folders(tmp_path) -> dict[str, Path]:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "acme", "auto_map": {
        "AutoModelForSequenceClassification": "modeling_acme.AcmeForSequenceClassification"}}))
    (custom / "model.safetensors").write_bytes(b"")
    empty_tokenizer = tmp_path / "tok"
    empty_tokenizer.mkdir()
    (empty_tokenizer / "tokenizer_config.json").write_text("{}")
    return {"pickled": pickled, "custom": custom, "tokenizer": empty_tokenizer}


@pytest.mark.parametrize("args,expect", [
    (["architecture=hf:pickled"], "holds only pickled weights (pytorch_model.bin)"),
    (["architecture=hf:custom"], "needs custom code from the checkpoint (trust_remote_code)"),
    (["architecture=bert", "tokenizer=tok"], "has no vocabulary: expected tokenizer.json"),
    (["architecture=cnn"], "a text dataset (text_column set) takes bert or hf:<folder>"),
    (["architecture=bert", "student_architecture=cnn"], "takes from-teacher (the teacher with fewer layers"),
    (["architecture=bert", "quantisation_methods=[int4]"], "'int4' is not a quantisation method"),
])
def test_mistakes_stop_before_anything_runs(tmp_path, reviews, bad_folders, args, expect):
    proc = _run_local(tmp_path, "--set", f"source={reviews}", *STUDENT, *[x for a in args for x in ("--set", a)])
    assert proc.returncode != 0 and not (tmp_path / "runs").exists()
    last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1]
    assert expect in last and "Traceback" not in proc.stderr


def test_a_missing_text_column_fails_the_data_step_with_its_reason(tmp_path):
    csv = tmp_path / "notes.csv"
    csv.write_text("body,label\nfine thing,a\nbad thing,b\n" * 10)
    proc = _run_local(tmp_path, "--set", f"source={csv}", "--set", "architecture=bert", *STUDENT)
    assert proc.returncode == 1
    last = proc.stdout.strip().splitlines()[-1] if not proc.stderr.strip() else proc.stderr.strip().splitlines()[-1]
    assert "make-dataset failed: text column 'text' is not in" in last and "['body', 'label']" in last


@pytest.mark.parametrize("architecture", ["bert", "hf:gs://acme-ml/models/my-bert"])
def test_text_runs_compile_for_vertex(tmp_path, architecture):
    params = _vertex_request(tmp_path, {"source": "gs://acme-ml/data/reviews.csv", "text_column": "text",
                                        "architecture": architecture, "model_args": {} if "hf:" in architecture
                                        else TINY_BERT, "student_architecture": "from-teacher",
                                        "student_args": {"layers": 1}, "max_length": 64,
                                        "quantisation_methods": ["fused", "dynamic-int8"]})
    assert params["text_column"] == "text" and params["architecture"] == architecture
    assert params["max_length"] == 64 and params["quantisation_methods"] == ["fused", "dynamic-int8"]
    if architecture.startswith("hf:"):  # the folder's own tokenizer, and its content keys the train step's cache
        assert params["tokenizer"] == "gs://acme-ml/models/my-bert"
