"""Edge export with real ONNX Runtime: the ORT-format model answers as the ONNX one does on the
test split, its config names the operators of the graph it holds, the figures are measured, int8
converts too, and bad input fails with one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelpress.core.errors import ModelpressError
from modelpress.data import load_dataset
from modelpress.export import edge, runtime
from modelpress.selection import edge_benchmark

QUICK = dict(threads=1, window_seconds=0.05, max_windows=3, load_repeats=3, log=lambda s: None)


@pytest.fixture(scope="module")
def mlp_edge(tmp_path_factory, mlp_onnx_dir, digits_dir):
    out = tmp_path_factory.mktemp("edge") / "mlp"
    table = out.parent / "mlp.md"
    result = edge_benchmark.export_edge(mlp_onnx_dir, digits_dir, str(out), table_path=str(table), **QUICK)
    return out, result, table


def _graph_operators(onnx_path: Path, tmp_path: Path) -> dict[str, list[str]]:
    """The operators of the graph ONNX Runtime optimises `onnx_path` into, as the converter does
    (all optimisations, the x86-only NCHWc layout left out), read from the saved ONNX graph."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    opts.add_session_config_entry("session.qdqisint8allowed", "0")
    ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=["NchwcTransformer"])
    found: dict[str, set] = {}
    for node in onnx.load(str(tmp_path / "optimised.onnx")).graph.node:
        found.setdefault(node.domain or "ai.onnx", set()).add(node.op_type)
    return {d: sorted(ops) for d, ops in sorted(found.items())}


def test_the_ort_model_gives_the_onnx_models_outputs_on_the_test_split(mlp_edge, digits_dir):
    out, result, _ = mlp_edge
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.ort", "required_operators.config", "meta.json"}
    x = load_dataset(digits_dir).test.x
    onnx_out = runtime.run_logits(runtime.session(out / "model.onnx"), x)
    ort_out = runtime.run_logits(runtime.session(out / "model.ort"), x)
    assert np.abs(ort_out - onnx_out).max() <= 1e-5
    assert (ort_out.argmax(1) == onnx_out.argmax(1)).all()
    check = json.loads((out / "meta.json").read_text())["edge"]["verification"]
    assert check["rows"] == len(x) and check["argmax_agreement"] == 1.0 and check["max_abs_diff"] <= 1e-5


def test_the_config_names_the_operators_of_the_converted_graph(mlp_edge, tmp_path):
    out, result, _ = mlp_edge
    ops = edge.required_operators(out / "required_operators.config")
    assert "Gemm" in ops["ai.onnx"]  # the MLP's layers
    assert ops == _graph_operators(out / "model.onnx", tmp_path)
    assert json.loads((out / "meta.json").read_text())["edge"]["operators"] == ops
    assert result["metrics"]["operators"] == sum(map(len, ops.values()))
    assert "/tmp" not in (out / "required_operators.config").read_text()  # no temporary path in the header


def test_sizes_load_times_and_latencies_are_measured_for_both_files(mlp_edge):
    out, result, table = mlp_edge
    m = result["metrics"]
    for fmt, name in (("onnx", "model.onnx"), ("ort", "model.ort")):
        assert m[f"{fmt}_size_bytes"] == (out / name).stat().st_size > 0
        assert m[f"{fmt}_load_ms"] > 0 and 0 < m[f"{fmt}_p50_ms"] <= m[f"{fmt}_p95_ms"]
    assert m["size_ratio"] == pytest.approx(m["ort_size_bytes"] / m["onnx_size_bytes"])
    meta = json.loads((out / "meta.json").read_text())
    assert meta["edge"]["ort"]["latency_ms"]["n"] > 0 and meta["edge"]["machine"]["threads"] == 1
    assert meta["architecture"] == "mlp"  # the ONNX model's card carries over
    text = table.read_text()
    assert "| model.ort |" in text and "| model.onnx |" in text and "Gemm" in text
    [line] = edge_benchmark.summary_lines(m)
    assert "edge (ORT format)" in line and "load" in line and "p50" in line
    assert edge_benchmark.summary_lines({}) == []  # a skipped step says nothing


def test_a_static_int8_model_converts_and_answers_alike(tmp_path, mlp_onnx_dir, digits_dir):
    from modelpress.compression import quantisation

    quantisation.quantise(mlp_onnx_dir, digits_dir, str(tmp_path / "int8"), method="static-int8",
                          calibration_samples=32, log=lambda s: None)
    result = edge_benchmark.export_edge(str(tmp_path / "int8"), digits_dir, str(tmp_path / "edge"), **QUICK)
    check = json.loads((tmp_path / "edge" / "meta.json").read_text())["edge"]["verification"]
    assert check["precision"] == "int8" and "dequantised" in check["compared"]
    assert check["argmax_agreement"] == 1.0 and check["max_abs_diff"] <= 1e-5
    ops = edge.required_operators(tmp_path / "edge" / "required_operators.config")
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops["ai.onnx"])
    assert result["metrics"]["ort_size_bytes"] > 0


def test_outputs_that_differ_fail_with_the_figures():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert edge.compare(ref, ref + 1e-7, task="classification", atol=1e-5, rtol=1e-5)["argmax_agreement"] == 1.0
    with pytest.raises(ModelpressError, match="max abs diff 0.001"):
        edge.compare(ref, ref + 1e-3, task="classification", atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelpressError, match="class agreement 0.5000"):
        edge.compare(ref, ref[[1, 1]], task="classification", atol=2.0, rtol=0.0)


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "no ONNX model at"),
    (lambda d: (d.mkdir(), (d / "model.onnx").write_bytes(b"not a model")), "not a readable ONNX model"),
])
def test_bad_input_gives_one_clear_error_and_no_output(tmp_path, digits_dir, make, message):
    make(tmp_path / "in")
    with pytest.raises(ModelpressError, match=message):
        edge_benchmark.export_edge(str(tmp_path / "in"), digits_dir, str(tmp_path / "out"), **QUICK)
    assert not (tmp_path / "out").exists()


def test_an_unknown_target_platform_names_the_choices(tmp_path, mlp_onnx_dir):
    with pytest.raises(ModelpressError, match="target_platform must be one of"):
        edge.convert(mlp_onnx_dir, tmp_path, target_platform="riscv")
