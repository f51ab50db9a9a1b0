import json
import re

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelpress.selection import report
from modelpress.deploy import repository
from modelpress.core.errors import ModelpressError


def test_deploy_writes_numbered_versions_and_a_triton_config(mlp_onnx_dir, tmp_path):
    repo = tmp_path / "repo"
    assert repository.latest(repo, "digits") is None
    assert repository.deploy(mlp_onnx_dir, repo, "digits", max_batch_size=32) == 1
    assert repository.deploy(mlp_onnx_dir, repo, "digits", max_batch_size=32) == 2
    assert repository.versions(repo, "digits") == [1, 2]
    assert (repo / "digits" / "2" / "model.onnx").exists()
    assert json.loads((repo / "digits" / "2" / "meta.json").read_text())["version"] == 2
    assert repository.latest(repo, "digits") == repo / "digits" / "2"
    assert not [p for p in (repo / "digits").iterdir() if p.name.startswith(".")]  # no leftovers
    config = text_format.Parse((repo / "digits" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert config.name == "digits" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32
    assert config.input[0].name == "input" and list(config.input[0].dims) == [1, 8, 8]
    assert config.input[0].data_type == mc.TYPE_FP32
    assert config.output[0].name == "logits" and list(config.output[0].dims) == [10]
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    assert repository.read_config(repo, "digits") == config


def test_a_half_written_version_is_ignored(mlp_onnx_dir, tmp_path):
    repo = tmp_path / "repo"
    repository.deploy(mlp_onnx_dir, repo, "m")
    (repo / "m" / "2").mkdir()  # a copy that never completed: no model.onnx
    assert repository.latest(repo, "m") == repo / "m" / "1"
    assert repository.deploy(mlp_onnx_dir, repo, "m") == 2  # the empty folder is taken over
    assert (repo / "m" / "2" / "model.onnx").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".", "-x"])
def test_model_names_are_checked(mlp_onnx_dir, tmp_path, name):
    with pytest.raises(ModelpressError, match="invalid model name"):
        repository.deploy(mlp_onnx_dir, tmp_path / "repo", name)


def test_pareto_front():
    pts = [("a", 1.0, 0.9), ("b", 2.0, 0.95), ("c", 3.0, 0.94), ("d", 0.5, 0.5)]
    assert set(report.pareto_front(pts)) == {"a", "b", "d"}


def test_report_is_self_contained_and_marks_the_choice():
    rows = [{"name": n, "role": role, "kind": "onnx", "accuracy": acc, "size_bytes": size, "gzip_bytes": size // 2,
             "params": 10, "macs": 1000, "latency_ms": {"p50": p, "p90": p, "p95": p, "p99": p, "stable": True},
             "throughput_per_s": 1 / p, "confusion_matrix": [[5, 1], [0, 6]]}
            for n, role, acc, p, size in [("torch", "baseline", 0.9, 1.0, 4000), ("int8", "candidate", 0.91, 0.1, 900)]]
    results = {"variants": rows, "dataset": {"class_names": ["a", "b"]}, "machine": {"cpu_model": "x"}}
    decision = {"chosen": "int8", "reason": "fastest", "accuracy_bar": 0.89,
                "table": [{"name": "int8", "accuracy": 0.91, "objective_value": 0.1, "checks": {"accuracy": True},
                           "eligible": True}]}
    page = report.render_html(results, decision, {"blessed": True, "reason": "no champion"})
    assert page.count("data:image/png;base64,") == 3  # scatter, sizes, confusion matrix
    assert not re.search(r"src=['\"]http", page)
    assert 'class="chosen"' in page and "int8 ★" in page
    assert page.index(">torch<") < page.index("int8 ★")  # baseline row first
    md = report.markdown_table(results, decision)
    assert "int8 **(chosen)**" in md and md.splitlines()[2].startswith("| torch")
