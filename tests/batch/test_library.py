"""modelpress.batch on real models and ONNX Runtime: sources, bad rows, formats, models, atomic writes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from modelpress import batch
from modelpress.core.errors import ModelpressError
from modelpress.deploy import repository
from tests.batch.conftest import FEATURES, read_jsonl, write_digits_csv


def _predict(source, model, out, **settings):
    logs: list[str] = []
    summary = batch.predict(str(source), model, out, batch.BatchSettings(**settings), log=logs.append)
    return summary, logs


def _corrupt_csv(path):
    """20 digits rows; rows 4, 9 and 15 malformed: a missing field, a word, a NaN."""
    lines = write_digits_csv(path, 20).read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 2)[0] + ",3"
    for line, value in ((10, "seven"), (16, "nan")):
        cells = lines[line].split(",")
        cells[3] = value
        lines[line] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_three_malformed_rows_go_to_the_errors_file_and_every_other_row_is_predicted(tmp_path, served):
    source = _corrupt_csv(tmp_path / "bad.csv")
    summary, _ = _predict(source, served.onnx["tab"], tmp_path / "out", key_column="id", batch_size=4, chunk_rows=7)
    errors = read_jsonl(tmp_path / "out" / "errors.jsonl")
    assert [(e["row"], e["id"], e["line"]) for e in errors] == [(4, "r4", 6), (9, "r9", 11), (15, "r15", 17)]
    assert "fields, the header has 66" in errors[0]["reason"]
    assert "column 'px2': 'seven' is not a number" in errors[1]["reason"] and errors[1]["input"][3] == "seven"
    assert "column 'px2': 'nan' is not finite" in errors[2]["reason"]
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(20) if i not in (4, 9, 15)]
    assert (summary["rows_read"], summary["rows_predicted"], summary["rows_failed"]) == (20, 17, 3)
    # the good rows predict exactly as they do in a clean file
    clean, _ = _predict(write_digits_csv(tmp_path / "clean.csv", 20), served.onnx["tab"], tmp_path / "clean",
                        key_column="id")
    by_key = {r["id"]: r for r in read_jsonl(tmp_path / "clean" / "predictions.jsonl")}
    assert all(r == by_key[r["id"]] for r in rows)


def test_jsonl_lines_by_feature_name_instance_or_bare_list_and_their_bad_lines(tmp_path, served):
    x = np.loadtxt(write_digits_csv(tmp_path / "d.csv", 6), delimiter=",", skiprows=1, usecols=range(1, 65))
    lines = [json.dumps({"id": "a", **dict(zip(FEATURES, x[0].tolist()))}),
             json.dumps({"id": "b", "instance": x[1].tolist()}),
             json.dumps(x[2].tolist()),
             "{not json",
             json.dumps({"id": "e", "instance": x[4].tolist()[:10]}),
             json.dumps({"id": "f", "instance": ["1"] * 64})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    _predict(tmp_path / "in.jsonl", served.onnx["tab"], tmp_path / "out")
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    online = served.infer_features("tab", x[:3])
    assert [r["row"] for r in rows] == [0, 1, 2] and [r["prediction"] for r in rows] == online["label"].tolist()
    reasons = {e["row"]: e["reason"] for e in read_jsonl(tmp_path / "out" / "errors.jsonl")}
    assert "not valid JSON" in reasons[3] and "shape [10]; the model takes [64]" in reasons[4]
    assert "not all numbers" in reasons[5]


def test_csv_and_parquet_hold_what_jsonl_holds(tmp_path, served):
    import pyarrow.parquet as pq

    source = write_digits_csv(tmp_path / "in.csv", 50)
    for fmt in batch.FORMATS:
        _predict(source, served.onnx["tab"], tmp_path / fmt, key_column="id", output_format=fmt, chunk_rows=20)
    rows = read_jsonl(tmp_path / "jsonl" / "predictions.jsonl")
    table = pq.read_table(tmp_path / "parquet" / "predictions.parquet").to_pylist()
    assert [t["id"] for t in table] == [r["id"] for r in rows] and all(
        t["prediction"] == r["prediction"] for t, r in zip(table, rows))
    np.testing.assert_allclose([t["scores"] for t in table], [r["scores"] for r in rows], rtol=1e-6)
    lines = (tmp_path / "csv" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "id,prediction," + ",".join(f"score_{c}" for c in range(10))
    assert [line.split(",")[1] for line in lines[1:]] == [r["prediction"] for r in rows]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_regression_predictions_are_the_served_values(tmp_path, served):
    from modelpress.data import load_source

    model = batch.resolve_model(repository=str(served.repo), model_name="diabetes")
    summary, _ = _predict("diabetes", model, tmp_path / "out")
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    online = served.infer_features("diabetes", load_source("diabetes").x)["logits"][:, 0]
    assert summary["task"] == "regression" and len(rows) == 442 and "scores" not in rows[0]
    np.testing.assert_allclose([r["prediction"] for r in rows], online, rtol=1e-5)
    assert online.std() > 1  # de-scaled: disease-progression units, not standardised ones


def test_texts_from_csv_and_jsonl_match_the_served_text_model(tmp_path, served):
    texts = ["a wonderful film, I loved it", "boring and far too long", "the plot was " + "very " * 200 + "bad",
             "   ", "great acting, weak ending"]
    (tmp_path / "t.csv").write_text("key,text\n" + "".join(f'k{i},"{t}"\n' for i, t in enumerate(texts)))
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"key": f"k{i}", "text": t}) + "\n"
                                              for i, t in enumerate(texts)))
    good = [t for t in texts if t.strip()]
    online = served.infer_texts("reviews", good)
    for name in ("t.csv", "t.jsonl"):
        _predict(tmp_path / name, served.onnx["reviews"], tmp_path / name[2:], key_column="key", batch_size=2)
        rows = read_jsonl(tmp_path / name[2:] / "predictions.jsonl")
        assert [r["key"] for r in rows] == ["k0", "k1", "k2", "k4"]
        assert [r["prediction"] for r in rows] == online["label"].tolist()
        np.testing.assert_allclose([r["scores"] for r in rows], online["logits"], rtol=1e-4, atol=1e-5)
        (error,) = read_jsonl(tmp_path / name[2:] / "errors.jsonl")
        assert error["key"] == "k3" and "empty" in error["reason"]
    with open(tmp_path / "t.csv", "ab") as f:  # a Latin-1 line: that row fails, the others are scored
        f.write(b'k5,"caf\xe9 au lait"\n')
    summary, _ = _predict(tmp_path / "t.csv", served.onnx["reviews"], tmp_path / "latin", key_column="key")
    assert (summary["rows_predicted"], summary["rows_failed"]) == (4, 2)
    assert "not valid UTF-8" in read_jsonl(tmp_path / "latin" / "errors.jsonl")[1]["reason"]


def test_images_are_decoded_resized_and_made_grey_as_the_data_step_does(tmp_path, served):
    from modelpress.data import load_source
    from modelpress.data.preprocessing import convert_channels
    from modelpress.export.runtime import run_logits, session

    rng = np.random.default_rng(0)
    for i in range(6):  # 16x16 RGB files for the 8x8 grey digits model
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    summary, logs = _predict(tmp_path / "imgs", served.onnx["digits"], tmp_path / "out")
    rows = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    trained = convert_channels(load_source(str(tmp_path / "imgs"), image_size=8), 1, log=lambda s: None)
    expected = run_logits(session(served.onnx["digits"]), trained.x)  # class folders in order, files sorted
    assert [r["path"] for r in rows] == ["c0/0.png", "c0/2.png", "c0/4.png", "c1/1.png", "c1/3.png", "c1/5.png"]
    np.testing.assert_allclose([r["scores"] for r in rows], expected, rtol=1e-5, atol=1e-5)
    assert any("pixels reach" in line and "0..16" in line for line in logs)  # 0..255 files for a 0..16 model


def test_the_champion_a_version_or_an_onnx_folder(tmp_path, served):
    repo = tmp_path / "repo"
    for _ in range(2):
        repository.deploy(served.onnx["tab"], repo, "tab")
    assert batch.resolve_model(repository=str(repo), model_name="tab") == repo / "tab" / "2"
    assert batch.resolve_model(repository=str(repo), model_name="tab", version=1) == repo / "tab" / "1"
    config = (repo / "tab" / "config.pbtxt").read_text()
    (repo / "tab" / "config.pbtxt").write_text(config.replace("latest {\n    num_versions: 1\n  }",
                                                              "specific {\n    versions: 1\n  }"))
    assert batch.resolve_model(repository=str(repo), model_name="tab") == repo / "tab" / "1"  # as the server serves
    with pytest.raises(ModelpressError, match=r"no version 5 .* deployed versions: \[1, 2\]"):
        batch.resolve_model(repository=str(repo), model_name="tab", version=5)
    with pytest.raises(ModelpressError, match="has no deployed version .* deploy one first"):
        batch.resolve_model(repository=str(repo), model_name="other")
    assert batch.resolve_model(onnx_model=str(served.onnx["tab"] / "model.onnx")) == served.onnx["tab"]
    with pytest.raises(ModelpressError, match="no ONNX model at"):
        batch.resolve_model(onnx_model=str(tmp_path / "nothing"))


def test_a_failure_midway_leaves_the_old_files_and_no_temporary_ones(tmp_path, served, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text("old\n")
    calls = []

    def failing(self, outputs):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("disk full")
        return real(self, outputs)

    real = batch.BatchModel.predictions
    monkeypatch.setattr(batch.BatchModel, "predictions", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        _predict(write_digits_csv(tmp_path / "in.csv", 100), served.onnx["tab"], out, batch_size=10, chunk_rows=10)
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl"]
    assert (out / "predictions.jsonl").read_text() == "old\n"


def test_a_row_the_model_fails_on_is_an_error_and_its_batch_is_still_predicted(tmp_path, served, monkeypatch):
    real = batch.BatchModel.run

    def picky(self, inputs):
        if (np.asarray(inputs)[:, 0] == 99).any():
            raise RuntimeError("ONNX Runtime: invalid value\nmore detail")
        return real(self, inputs)

    monkeypatch.setattr(batch.BatchModel, "run", picky)
    source = write_digits_csv(tmp_path / "in.csv", 12)
    lines = source.read_text().splitlines()
    lines[3] = lines[3].replace("r2,0,", "r2,99,", 1)
    source.write_text("\n".join(lines) + "\n")
    summary, logs = _predict(source, served.onnx["tab"], tmp_path / "out", key_column="id", batch_size=8,
                             progress_seconds=0)
    (error,) = read_jsonl(tmp_path / "out" / "errors.jsonl")
    assert error["id"] == "r2" and error["reason"] == "the model failed on this instance: ONNX Runtime: invalid value"
    assert len(read_jsonl(tmp_path / "out" / "predictions.jsonl")) == 11
    assert any("rows/s" in line and "ETA" in line for line in logs)  # the bytes read tell a CSV's progress


def test_mistakes_about_the_whole_source_are_one_clear_line(tmp_path, served, monkeypatch):
    tab = served.onnx["tab"]
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    cases = [(tmp_path / "cols.csv", tab, {}, r"lacks the model's feature column\(s\) \['px0'"),
             (write_digits_csv(tmp_path / "d.csv", 3), tab, {"key_column": "ident"},
              "key_column 'ident' is not a column"),
             (tmp_path / "d.csv", served.onnx["reviews"], {"key_column": "id"}, "column 'text' is not a column"),
             (tmp_path / "imgs", served.onnx["reviews"], {}, "a text model scores texts"),
             (tmp_path / "nothing.csv", tab, {}, "batch source not found"),
             (tmp_path / "d.csv", tab, {"batch_size": 0}, "batch_size must be a whole number >= 1")]
    (tmp_path / "imgs").mkdir()
    for source, model, settings, message in cases:
        with pytest.raises(ModelpressError, match=message):
            _predict(source, model, tmp_path / "out", **settings)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(ModelpressError, match="parquet needs pyarrow.*pip install pyarrow"):
        _predict(tmp_path / "d.csv", tab, tmp_path / "out", output_format="parquet")
    assert not (tmp_path / "out").exists()
