"""Text classifiers from transformers: hf: folders and their refusals, BERT from a config, the
text model artifact, the DistilBERT-style student, ONNX export and the fused graph. Tiny
models only (2 layers, hidden 32, 2 heads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from modelpress.core.errors import ModelpressError
from modelpress.data.tokenizer import load_tokenizer
from modelpress.export import text_export
from modelpress.models import text

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "cheap flights to paris now",
         "win a free prize today", "the weather is mild and dry", "stocks fell sharply on monday"] * 4
MAX_LENGTH = 32
TINY = dict(layers=2, hidden=32, heads=2, intermediate=64, max_position=MAX_LENGTH)


def _logits(model, feed):
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A WordPiece tokenizer trained offline on a few sentences, saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(TEXTS, trainers.WordPieceTrainer(
        vocab_size=100, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    folder = tmp_path_factory.mktemp("tokenizer")
    tok.save(str(folder / "tokenizer.json"))
    return str(folder)


@pytest.fixture(scope="module")
def tiny():
    return text.bert_from_config(100, 3, seed=0, **TINY)


@pytest.fixture(scope="module")
def saved(tiny, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "model"
    info = text.text_info(tiny, text.BERT_CONFIG, class_names=["a", "b", "c"], max_length=MAX_LENGTH)
    text.save_text_model(tiny, tokenizer_dir, str(out), info)
    return str(out)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = text_export.export_text_onnx(tiny, str(path), max_length=MAX_LENGTH)
    return str(path), result


# ------------------------------------------------------------------ models and the artifact

def test_bert_from_config_is_seeded_and_checks_heads():
    a, b = (text.bert_from_config(50, 2, seed=3, **TINY) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.config.num_hidden_layers == 2 and a.config.hidden_size == 32 and a.config.num_labels == 2
    with pytest.raises(ModelpressError, match=r"hidden \(30\) must be a multiple of heads \(4\)"):
        text.bert_from_config(50, 2, layers=1, hidden=30, heads=4)


def test_saved_artifact_reloads_with_identical_logits(tiny, saved):
    files = {p.name for p in Path(saved).iterdir()}
    assert {"config.json", "model.safetensors", "spec.json", "tokenizer"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    model, spec = text.load_text_model(saved)
    feed = text_export.token_batch(tiny, 3, 11)
    np.testing.assert_array_equal(_logits(model, feed), _logits(tiny, feed))
    assert spec["format"] == "hf-text" and spec["architecture"] == "bert"
    assert spec["num_labels"] == 3 and spec["class_names"] == ["a", "b", "c"] and spec["max_length"] == MAX_LENGTH
    assert spec["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    tok = load_tokenizer(saved + "/tokenizer").tokenizer  # the tokenizer travels with the weights
    assert tok.encode("the cat sat").ids and tok.get_vocab_size() <= 100


def test_save_refuses_a_tokenizer_bigger_than_the_embedding(tokenizer_dir, tmp_path):
    small = text.bert_from_config(10, 2, **TINY)
    with pytest.raises(ModelpressError, match="vocab_size = the tokenizer's vocabulary size"):
        text.save_text_model(small, tokenizer_dir, str(tmp_path / "m"), {"architecture": "bert"})
    assert not (tmp_path / "m").exists()
    with pytest.raises(ModelpressError, match="has no vocabulary: expected tokenizer.json"):
        text.save_text_model(small, str(tmp_path), str(tmp_path / "m"), {})


def test_save_pretrained_folder_round_trips_through_load_hf(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path), safe_serialization=True)
    model, info = text.load_hf(str(tmp_path))
    feed = text_export.token_batch(tiny, 2, 9)
    np.testing.assert_array_equal(_logits(model, feed), _logits(tiny, feed))
    assert info["architecture"] == f"hf:{tmp_path}" and info["num_labels"] == 3 and info["fresh_head"] == []
    assert not model.training

    with pytest.raises(ModelpressError, match="classifies 3 labels but the dataset has 5; set replace_head"):
        text.load_hf(str(tmp_path), num_labels=5)
    fresh, info = text.load_hf(str(tmp_path), num_labels=5, replace_head=True)
    assert fresh.classifier.out_features == 5 and info["num_labels"] == 5
    assert set(info["fresh_head"]) == {"classifier.weight", "classifier.bias"}
    assert torch.equal(fresh.bert.embeddings.word_embeddings.weight, tiny.bert.embeddings.word_embeddings.weight)


def test_pickled_only_folder_is_refused_before_loading(tiny, tmp_path):
    tiny.config.to_json_file(str(tmp_path / "config.json"))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even read")  # refused by name: never unpickled
    with pytest.raises(ModelpressError, match=r"only pickled weights \(pytorch_model.bin\).*safe_serialization=True"):
        text.load_hf(str(tmp_path))
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(ModelpressError, match="no model.safetensors"):
        text.load_hf(str(tmp_path))


def test_custom_code_and_missing_config_are_refused(tiny, tmp_path):
    tiny.save_pretrained(str(tmp_path), safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_mine.MyModel"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelpressError, match=r"auto_map.*custom code.*never runs"):
        text.load_hf(str(tmp_path))
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelpressError, match="has no config.json"):
        text.load_hf(str(tmp_path))
    with pytest.raises(ModelpressError, match="no such folder"):
        text.load_hf(str(tmp_path / "absent"))


# ------------------------------------------------------------------ the student

def test_student_starts_from_every_other_teacher_layer():
    teacher = text.bert_from_config(100, 3, seed=1, layers=4, hidden=32, heads=2, intermediate=64, max_position=32)
    student = text.student_from_teacher(teacher)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    for i, layer in enumerate(student.bert.encoder.layer):
        source = teacher.bert.encoder.layer[2 * i].state_dict()
        for name, got in layer.state_dict().items():
            assert torch.equal(got, source[name]), name
    for part in ("embeddings", "pooler"):
        for got, want in zip(getattr(student.bert, part).state_dict().values(),
                             getattr(teacher.bert, part).state_dict().values()):
            assert torch.equal(got, want)
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    feed = text_export.token_batch(teacher, 3, 10)
    ours, theirs = _logits(student, feed), _logits(teacher, feed)
    assert ours.shape == theirs.shape and not np.allclose(ours, theirs)
    with pytest.raises(ModelpressError, match="1 to 4 layers"):
        text.student_from_teacher(teacher, layers=5)


# ------------------------------------------------------------------ ONNX

def test_export_has_dynamic_int64_inputs_and_matches_torch(tiny, exported):
    import onnxruntime as ort

    path, result = exported
    assert tiny.config._attn_implementation == "sdpa"  # exported with eager attention, then put back
    assert result["exporter"] == "torchscript" and result["max_abs_diff"] < 1e-4
    assert result["verify_shapes"] == [[1, 7], [1, MAX_LENGTH], [3, 7], [3, MAX_LENGTH]]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    assert [i.name for i in inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.type == "tensor(int64)" and all(isinstance(d, str) for d in i.shape) for i in inputs)
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for batch, length in ((2, 5), (4, MAX_LENGTH)):  # shapes other than those it was verified on
        feed = text_export.token_batch(tiny, batch, length, seed=7)
        np.testing.assert_allclose(sess.run(["logits"], feed)[0], _logits(tiny, feed), rtol=1e-3, atol=1e-4)


def test_export_refuses_a_length_past_the_position_embeddings(tiny, tmp_path):
    with pytest.raises(ModelpressError, match="max_length 64 must be 2 to 32"):
        text_export.export_text_onnx(tiny, str(tmp_path / "m.onnx"), max_length=64)
    assert not list(tmp_path.iterdir())


def test_optimiser_fuses_attention_and_layernorm_and_still_matches(tiny, exported, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "fused.onnx"
    stats = text_export.optimise_transformer(exported[0], str(out), num_heads=2, hidden_size=32,
                                             max_length=MAX_LENGTH)
    assert stats["Attention"] == 2 and stats["EmbedLayerNormalization"] == 1 and stats["BiasGelu"] == 2
    assert stats["SkipLayerNormalization"] == 0  # slower on the CPU than Add + LayerNorm (runtime.DISABLED_OPTIMIZERS)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert "Attention" in {n.op_type for n in onnx.load(str(out)).graph.node}
    for batch, length in ((1, 7), (3, MAX_LENGTH)):
        feed = text_export.token_batch(tiny, batch, length, seed=11)
        np.testing.assert_allclose(sess.run(["logits"], feed)[0], _logits(tiny, feed), rtol=1e-3, atol=1e-4)
    with pytest.raises(ModelpressError, match="multiple of num_heads"):
        text_export.optimise_transformer(exported[0], str(tmp_path / "x.onnx"), num_heads=3, hidden_size=32)


def test_dynamo_exporter_works_too(tiny, tmp_path):
    """torch 2.13's dynamo exporter handles BERT's dynamic axes (its graph fuses no attention)."""
    result = text_export.export_text_onnx(tiny, str(tmp_path / "m.onnx"), max_length=MAX_LENGTH, exporter="dynamo")
    assert result["exporter"] == "dynamo" and result["max_abs_diff"] < 1e-4


def test_distilbert_takes_no_token_types_and_distils_the_same_way(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    teacher = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=100, n_layers=2, dim=32, n_heads=2, hidden_dim=64, max_position_embeddings=MAX_LENGTH,
        num_labels=2)).eval()
    assert text.model_inputs(teacher) == ["input_ids", "attention_mask"]
    student = text.student_from_teacher(teacher)
    assert torch.equal(student.distilbert.transformer.layer[0].ffn.lin1.weight,
                       teacher.distilbert.transformer.layer[0].ffn.lin1.weight)
    result = text_export.export_text_onnx(teacher, str(tmp_path / "d.onnx"), max_length=MAX_LENGTH)
    assert result["inputs"] == ["input_ids", "attention_mask"]


def test_tokenizer_and_artifact_mistakes_are_named(saved, tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelpressError, match="is not a readable Hugging Face tokenizer.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "spec.json").write_text(json.dumps({"architecture": "mlp", "args": {}}))
    with pytest.raises(ModelpressError, match="not a text model artifact.*models.load_model"):
        text.load_text_model(str(tmp_path))
