"""A checkpoint's classifier against the dataset's classes, its position embeddings against
max_length, and weights files that are not what they claim: each a clear outcome, never a silently
wrong label or a traceback from inside transformers."""

from __future__ import annotations

import json

import pytest
import torch

from modelpress.core.errors import ModelpressError
from modelpress.models import text, text_sources
from modelpress.models.text_heads import align_head, check_length, classifier_layer

CLASSES = ["negative", "neutral", "positive"]


def _model(id2label=None):
    model = text.bert_from_config(50, 3, layers=1, hidden=16, heads=2, intermediate=32, max_position=24, seed=1)
    if id2label:
        model.config.id2label = dict(enumerate(id2label))
        model.config.label2id = {n: i for i, n in enumerate(id2label)}
    return model


def _logits(model):
    ids = torch.tensor([[2, 7, 9, 3], [2, 11, 3, 0]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids > 0).long()).logits


def test_a_checkpoint_in_another_class_order_is_reordered_to_the_datasets():
    model = _model(["positive", "negative", "neutral"])
    before = _logits(model)
    assert align_head(model, CLASSES, fresh=[], replace_head=False, source="hf:x", log=lambda _: None) == "reordered"
    after = _logits(model)
    for i, name in enumerate(CLASSES):  # output i now means CLASSES[i]: what it meant before under that name
        torch.testing.assert_close(after[:, i], before[:, ["positive", "negative", "neutral"].index(name)])


def test_other_class_names_are_refused_unless_the_head_is_replaced():
    model = _model(["spam", "ham", "eggs"])
    with pytest.raises(ModelpressError, match=r"classifies \['spam', 'ham', 'eggs'\].*set replace_head: true"):
        align_head(model, CLASSES, fresh=[], replace_head=False, source="hf:x")
    before = classifier_layer(model)[1].weight.clone()
    assert align_head(model, CLASSES, fresh=[], replace_head=True, source="hf:x", log=lambda _: None) == "fresh"
    assert not torch.equal(before, classifier_layer(model)[1].weight)  # re-initialised, not kept


def test_unnamed_classes_are_taken_in_the_datasets_order_and_the_log_says_so():
    said = []
    assert align_head(_model(), CLASSES, fresh=[], replace_head=False, source="hf:x", log=said.append) == "assumed"
    assert "names no classes" in said[0] and "check the order" in said[0]


def test_max_length_beyond_the_position_embeddings_is_refused(tmp_path):
    model = _model()
    with pytest.raises(ModelpressError, match="max_length 32 is more tokens than hf:x has position embeddings for"):
        check_length(model.config, 32, "hf:x")
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    with pytest.raises(ModelpressError, match=r"at most 24"):  # before anything runs: from config.json
        text_sources.check_text_arguments(f"hf:{tmp_path / 'm'}", {}, max_length=64)
    text_sources.check_text_arguments(f"hf:{tmp_path / 'm'}", {}, max_length=24)
    with pytest.raises(ModelpressError, match="max_position 16 is below max_length 32"):
        text_sources.check_text_arguments("bert", {"max_position": 16}, max_length=32)


def test_a_git_lfs_pointer_instead_of_weights_is_named(tmp_path):
    folder = tmp_path / "lfs"
    _model().save_pretrained(folder, safe_serialization=True)
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    with pytest.raises(ModelpressError, match="not a readable safetensors file.*git lfs pull"):
        text.check_folder(str(folder))


def test_a_headless_encoder_cannot_be_taken_as_it_is(tmp_path):
    from modelpress.data.text import make_text_dataset, write_reviews
    from modelpress.training import TrainSettings
    from modelpress.training.text_step import train_text_step

    csv = write_reviews(str(tmp_path / "r.csv"), 120)
    make_text_dataset(csv, str(tmp_path / "ds"), vocab_size=80, max_length=24, log=lambda _: None)
    config = _model().config
    config.num_labels = 2
    encoder = text._transformers().BertModel(config)  # no classifier: what a base checkpoint is
    encoder.save_pretrained(tmp_path / "enc", safe_serialization=True)
    for f in (tmp_path / "ds" / "tokenizer").iterdir():
        (tmp_path / "enc" / f.name).write_bytes(f.read_bytes())
    schema = json.loads((tmp_path / "ds" / "schema.json").read_text())
    schema["tokenizer"]["source"] = str(tmp_path / "enc")  # as the data step records the model's own
    (tmp_path / "ds" / "schema.json").write_text(json.dumps(schema))
    with pytest.raises(ModelpressError, match="has no trained classifier"):
        train_text_step(str(tmp_path / "ds"), str(tmp_path / "out"), architecture=f"hf:{tmp_path / 'enc'}",
                        model_args={}, settings=TrainSettings(epochs=0), log=lambda _: None)
    with pytest.raises(ModelpressError, match="replace_head with epochs 0"):
        train_text_step(str(tmp_path / "ds"), str(tmp_path / "out"), architecture=f"hf:{tmp_path / 'enc'}",
                        model_args={}, settings=TrainSettings(epochs=0), replace_head=True, log=lambda _: None)
    assert not (tmp_path / "out").exists()
