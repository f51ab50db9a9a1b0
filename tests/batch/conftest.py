"""Real models in a real repository, and a real `modelpress serve` answering them online.

- `tab`: an MLP trained on a CSV of the digits' 64 pixels (named columns px0..px63, an `id` key
  and a `label`), so its meta.json names its features;
- `digits`: the shared 8x8 grey digits MLP (tests/conftest.py's mlp_onnx_dir), for image folders;
- `diabetes`: a regression MLP (the value is de-scaled inside the graph);
- `reviews`: the tiny text classifier of tests/text_serving/conftest.py (its tokenizer/ beside it).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modelpress import data, training
from modelpress.deploy import repository
from tests.serving.conftest import start_server, stop_server
from tests.text_serving.conftest import text_build  # noqa: F401  (a fixture, shared)

FEATURES = [f"px{i}" for i in range(64)]
MAX_BATCH = 64  # repository.deploy's max_batch_size: the most rows one request may hold


def write_digits_csv(path: Path, rows: int | None = None, *, start: int = 0, key: bool = True) -> Path:
    """The digits' pixels as a table: id (r0, r1, ...; not for training), px0..px63 (0..16), label."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = bunch.data.astype(int), bunch.target
    stop = len(x) if rows is None else start + rows
    lines = [("id," if key else "") + ",".join(FEATURES) + ",label"]
    for i in range(start, stop):
        j = i % len(x)
        lines.append((f"r{i}," if key else "") + ",".join(map(str, x[j])) + f",{y[j]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _train_and_export(tmp: Path, source: str, epochs: int) -> Path:
    from modelpress.export import onnx_export

    data.make_dataset(source, str(tmp / "dataset"), seed=0, log=lambda s: None)
    training.train(str(tmp / "dataset"), str(tmp / "model"), architecture="mlp", model_args={"hidden": [32]},
                   settings=training.TrainSettings(epochs=epochs, seed=0), log=lambda s: None)
    onnx_export.export_onnx(str(tmp / "model"), str(tmp / "dataset"), str(tmp / "onnx"), log=lambda s: None)
    return tmp / "onnx"


@dataclass
class Served:
    repo: Path
    url: str
    onnx: dict  # model name -> its ONNX artifact folder

    def infer(self, name: str, inputs: list[dict]) -> dict:
        """POST /v2/models/<name>/infer (JSON): {output name: numpy array}."""
        body = json.dumps({"inputs": inputs}).encode()
        req = urllib.request.Request(f"{self.url}/v2/models/{name}/infer", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            doc = json.loads(r.read())
        return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in doc["outputs"]}

    def infer_features(self, name: str, x: np.ndarray) -> dict:
        x = np.asarray(x, dtype=np.float32)
        return self._in_requests(x, lambda part: self.infer(name, [
            {"name": "input", "datatype": "FP32", "shape": list(part.shape), "data": part.reshape(-1).tolist()}]))

    def infer_texts(self, name: str, texts: list[str]) -> dict:
        return self._in_requests(texts, lambda part: self.infer(name, [
            {"name": "text", "datatype": "BYTES", "shape": [len(part), 1], "data": list(part)}]))

    @staticmethod
    def _in_requests(rows, ask, size: int = MAX_BATCH) -> dict:
        """Requests of at most the config's max_batch_size rows, the answers joined."""
        parts = [ask(rows[i:i + size]) for i in range(0, len(rows), size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="session")
def served(tmp_path_factory, mlp_onnx_dir, text_build):  # noqa: F811
    tmp = tmp_path_factory.mktemp("batch-models")
    onnx = {"tab": _train_and_export(tmp / "tab", str(write_digits_csv(tmp / "digits.csv", key=False)), epochs=4),
            "digits": Path(mlp_onnx_dir),
            "diabetes": _train_and_export(tmp / "diabetes", "diabetes", epochs=3),
            "reviews": text_build.src}
    repo = tmp / "repo"
    for name, folder in onnx.items():
        repository.deploy(folder, repo, name)
    server = start_server(repo, tmp, "--poll-seconds", "0")
    yield Served(repo, server.url, onnx)
    stop_server(server)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
