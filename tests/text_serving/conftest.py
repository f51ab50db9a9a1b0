"""A real text classifier in a real repository: synthetic reviews -> the text dataset (its trained
tokenizer) -> a tiny BERT (1 layer, hidden 32) exported to ONNX -> a Triton-layout version with
`tokenizer/` beside model.onnx, as the deploy step lays it out. Servers come from
tests/serving/conftest.py's helpers."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from modelpress.deploy import repository
from modelpress.export.runtime import session as ort_session

MAX_LENGTH = 48
TOKEN_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


@dataclass
class TextBuild:
    dataset: Path        # the text dataset artifact (tokenizer/, splits, texts)
    src: Path            # model.onnx + meta.json, what deploy takes
    class_names: list[str]
    max_length: int

    @property
    def tokenizer(self) -> Path:
        return self.dataset / "tokenizer"

    def reference(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """ONNX Runtime run directly on token ids: the logits the server must answer."""
        return _session(str(self.src / "model.onnx")).run(["logits"], feed)[0]


_SESSIONS: dict = {}


def _session(path: str):
    if path not in _SESSIONS:
        _SESSIONS[path] = ort_session(path, threads=1)
    return _SESSIONS[path]


def meta_for(class_names: list[str], max_length: int) -> dict:
    """The version's meta.json as the export step writes it for a text model (the parts serving reads)."""
    from modelpress.export.text_artifact import text_input

    return {"class_names": list(class_names), "task": "classification", "max_length": max_length,
            "input": text_input(max_length, TOKEN_INPUTS, segments=2)}


@pytest.fixture(scope="session")
def text_build(tmp_path_factory) -> TextBuild:
    import torch

    from modelpress.data.text import make_text_dataset, write_reviews
    from modelpress.export.text_export import export_text_onnx
    from modelpress.models.text import bert_from_config

    tmp = tmp_path_factory.mktemp("textbuild")
    csv = write_reviews(str(tmp / "reviews.csv"), 300, seed=0)
    schema = make_text_dataset(csv, str(tmp / "dataset"), vocab_size=200, max_length=MAX_LENGTH, log=lambda _: None)
    model = bert_from_config(schema["vocab_size"], len(schema["class_names"]), layers=1, hidden=32, heads=2,
                             intermediate=64, max_position=64, seed=0)
    with torch.no_grad():  # untrained weights (std 0.02) give near-identical logits for every text: spread them
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    export_text_onnx(model, str(tmp / "src" / "model.onnx"), max_length=MAX_LENGTH)
    (tmp / "src" / "meta.json").write_text(json.dumps(meta_for(schema["class_names"], MAX_LENGTH)))
    shutil.copytree(tmp / "dataset" / "tokenizer", tmp / "src" / "tokenizer")  # as the export step leaves it
    return TextBuild(tmp / "dataset", tmp / "src", list(schema["class_names"]), MAX_LENGTH)


def deploy_text(repo: Path, build: TextBuild, name: str = "reviews", **kwargs) -> Path:
    """repository.deploy: the next version, tokenizer/ copied beside model.onnx."""
    version = repository.deploy(build.src, repo, name, **kwargs)
    folder = repo / name / str(version)
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    return folder


def add_version(repo: Path, name: str, build: TextBuild, meta: dict, tokenizer: bool = True) -> Path:
    """A new version written the way deploy writes one: complete in a hidden folder, then renamed."""
    version = repository.versions(repo, name)[-1] + 1
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=repo / name))
    shutil.copy2(build.src / "model.onnx", tmp / "model.onnx")
    (tmp / "meta.json").write_text(json.dumps(meta))
    if tokenizer:
        shutil.copytree(build.tokenizer, tmp / "tokenizer")
    os.rename(tmp, repo / name / str(version))
    return repo / name / str(version)


def add_tokenizer(folder: Path, build: TextBuild) -> None:
    """tokenizer/ into an existing version, appearing at once."""
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=folder))
    shutil.copytree(build.tokenizer, tmp, dirs_exist_ok=True)
    os.rename(tmp, folder / "tokenizer")
