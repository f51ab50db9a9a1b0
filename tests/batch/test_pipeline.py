"""The batch_prediction pipeline, for real, through kfp.local (pipelines/run_local.py), compared with
what a real `modelpress serve` answers online for the same rows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelpress.core.errors import ModelpressError
from pipelines import settings

from tests.batch.conftest import read_jsonl, write_digits_csv

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *sets: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    args = [a for s in sets for a in ("--set", s)]
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "run_local.py"), "batch_prediction", *args,
                           "--pipeline-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    found = sorted((tmp_path / "runs").glob("batch-prediction-*/summary.json"))
    return proc, json.loads(found[-1].read_text()) if found else None


def _outputs(summary: dict) -> tuple[Path, Path]:
    (task,) = summary["tasks"]
    return Path(task["artifacts"]["predictions"]), Path(task["artifacts"]["errors"])


def test_a_csv_with_a_key_column_matches_the_served_champion(tmp_path, served):
    source = write_digits_csv(tmp_path / "instances.csv", 300, start=1000)  # id, px0..px63, label (ignored)
    proc, summary = _run(tmp_path, f"source={source}", "key_column=id", f"repository={served.repo}",
                         "model_name=tab", "batch_size=32", "chunk_rows=100")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rows/s" in proc.stdout and "[batch-predict] 300 rows done" in proc.stdout
    predictions_dir, errors_dir = _outputs(summary)
    rows = read_jsonl(predictions_dir / "predictions.jsonl")
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(1000, 1300)]
    assert (errors_dir / "errors.jsonl").read_text() == ""
    assert summary["tasks"][0]["parameters"]["Output"] == 300
    assert summary["tasks"][0]["metrics"]["rows_failed"] == 0
    # the same rows, sent to the server as one request
    x = np.loadtxt(source, delimiter=",", skiprows=1, usecols=range(1, 65), dtype=np.float32)
    online = served.infer_features("tab", x)
    assert [r["prediction"] for r in rows] == online["label"].tolist()
    np.testing.assert_allclose([r["scores"] for r in rows], online["logits"], rtol=1e-5, atol=1e-5)


def _digit_images(folder: Path) -> tuple[list[str], np.ndarray]:
    """40 digits as 8x8 grey PNGs holding the raw 0..16 values (what the digits model trained on), in
    class sub-folders, plus one file that is not an image; (relative paths in order, pixels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    paths, pixels = [], []
    for i in range(40):
        rel = f"{bunch.target[i]}/img{i:03d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(bunch.images[i].astype(np.uint8), mode="L").save(folder / rel)
        paths.append(rel)
        pixels.append(bunch.images[i][None].astype(np.float32))
    (folder / "3" / "broken.png").write_bytes(b"not a png")
    order = np.argsort(paths, kind="stable")
    return [paths[i] for i in order], np.stack(pixels)[order]


def test_an_image_folder_matches_the_served_champion_and_a_bad_file_is_an_error_row(tmp_path, served):
    paths, pixels = _digit_images(tmp_path / "images")
    proc, summary = _run(tmp_path, f"source={tmp_path / 'images'}", f"repository={served.repo}",
                         "model_name=digits", "output_format=csv")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    predictions_dir, errors_dir = _outputs(summary)
    lines = (predictions_dir / "predictions.csv").read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    assert header == ["path", "prediction"] + [f"score_{c}" for c in range(10)]
    assert [r[0] for r in rows] == paths
    online = served.infer_features("digits", pixels)
    assert [r[1] for r in rows] == online["label"].tolist()
    np.testing.assert_allclose([[float(v) for v in r[2:]] for r in rows], online["logits"], rtol=1e-5, atol=1e-5)
    (error,) = read_jsonl(errors_dir / "errors.jsonl")
    assert error["path"] == "3/broken.png" and "cannot read image" in error["reason"]
    batch_summary = json.loads((predictions_dir / "summary.json").read_text())
    assert (batch_summary["rows_read"], batch_summary["rows_predicted"], batch_summary["rows_failed"]) == (41, 40, 1)


def test_bad_parameters_are_refused_before_running_with_one_line(tmp_path):
    proc, _ = _run(tmp_path, "output_format=xml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: output_format must be one of ['jsonl', 'csv', 'parquet'], got 'xml'"
    assert not (tmp_path / "runs").exists()
    cfg = settings.load("local")  # the same checks run_local makes, without another process
    for bad, message in [({"source": str(tmp_path / "missing.csv")}, "missing.csv does not exist"),
                         ({"chunk_rows": 0}, "chunk_rows must be a whole number >= 1"),
                         ({"version": -1}, "version must be 0 (the deployed champion)"),
                         ({"threads": 0}, "threads must be a whole number >= 1")]:
        with pytest.raises(ModelpressError, match=re.escape(message)):
            cfg.pipeline_parameters("batch_prediction", bad)
