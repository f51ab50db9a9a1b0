"""Structured pruning of text classifiers: whole attention heads and feed-forward neurons removed
with Torch-Pruning, the pruned model rebuilt from config.json + layer_shapes + model.safetensors,
exported to ONNX; models it cannot prune refused with the reason. Tiny models only."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from modelpress.compression.text_pruning import prune_text_model
from modelpress.core.errors import ModelpressError
from modelpress.export.text_export import export_text_onnx
from modelpress.models import text, text_shapes

TINY = dict(vocab_size=100, num_labels=3, layers=2, hidden=32, heads=4, intermediate=64, max_position=32)


@pytest.fixture(scope="module")
def bert():
    torch.set_num_threads(2)  # the suite shares small CI machines
    return text.bert_from_config(**TINY)


@pytest.fixture(scope="module")
def pruned(bert):
    return prune_text_model(bert, amount=0.5)


def _batch(rows: int = 3, length: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    """Token ids with padding: row 1 keeps 5 tokens, row 2 keeps 2."""
    ids = torch.randint(1, TINY["vocab_size"], (rows, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_heads_and_neurons_are_removed_per_layer(bert, pruned):
    model, report = pruned
    assert report["model_class"] == "BertForSequenceClassification" and len(report["layers"]) == 2
    for row, layer in zip(report["layers"], model.bert.encoder.layer):
        assert (row["heads_before"], row["heads_after"]) == (4, 2) and len(row["heads_removed"]) == 2
        assert (row["intermediate_before"], row["intermediate_after"]) == (64, 32)
        attn = layer.attention.self
        assert (attn.num_attention_heads, attn.attention_head_size, attn.all_head_size) == (2, 8, 16)
        assert [m.out_features for m in (attn.query, attn.key, attn.value)] == [16, 16, 16]
        assert layer.attention.output.dense.weight.shape == (32, 16)
        assert layer.intermediate.dense.weight.shape == (32, 32) and layer.output.dense.weight.shape == (32, 32)
    assert (report["heads_before"], report["heads_after"]) == (8, 4)
    assert (report["intermediate_before"], report["intermediate_after"]) == (128, 64)
    # the hidden size, pooler and classifier keep their widths
    assert model.bert.embeddings.word_embeddings.weight.shape == (100, 32)
    assert model.bert.pooler.dense.weight.shape == (32, 32) and model.classifier.weight.shape == (3, 32)
    # per layer: 16 of q/k/v's outputs (+bias) and of the output projection's inputs, 32 FFN neurons
    hidden, gone_attn, gone_ffn = 32, 16, 32
    removed = 2 * (3 * gone_attn * (hidden + 1) + gone_attn * hidden + gone_ffn * (hidden + 1) + gone_ffn * hidden)
    assert report["params_before"] == sum(p.numel() for p in bert.parameters())
    assert report["params_before"] - report["params_after"] == removed
    assert report["params_after"] == sum(p.numel() for p in model.parameters())
    assert 0.5 < report["params_ratio"] < 0.75
    assert bert.bert.encoder.layer[0].attention.self.num_attention_heads == 4  # the model given is left whole
    assert bert.bert.encoder.layer[0].intermediate.dense.out_features == 64
    assert not model.training


def test_whole_heads_go_and_the_rest_compute_as_before(bert, pruned):
    """The pruned model equals the original with the removed heads' and neurons' outputs zeroed."""
    model, report = pruned
    masked = text.bert_from_config(**TINY)
    masked.load_state_dict(bert.state_dict())
    for row, big, small, out in zip(report["layers"], bert.bert.encoder.layer, model.bert.encoder.layer,
                                    masked.bert.encoder.layer):
        kept = [h for h in range(4) if h not in row["heads_removed"]]
        rows = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in kept])
        for name in ("query", "key", "value"):  # q, k and v keep the same whole heads
            kept_rows = getattr(big.attention.self, name).weight[rows]
            assert torch.equal(getattr(small.attention.self, name).weight, kept_rows)
        assert torch.equal(small.attention.output.dense.weight, big.attention.output.dense.weight[:, rows])
        w_big, w_small = big.intermediate.dense.weight, small.intermediate.dense.weight
        neurons = (w_small[:, None] == w_big[None]).all(-1).nonzero()[:, 1]
        assert neurons.tolist() == sorted(set(neurons.tolist())) and len(neurons) == 32
        gone = torch.ones(4 * 8, dtype=torch.bool)
        gone[rows] = False
        dead = torch.ones(64, dtype=torch.bool)
        dead[neurons] = False
        with torch.no_grad():
            out.attention.output.dense.weight[:, gone] = 0
            out.output.dense.weight[:, dead] = 0
    batch = _batch()
    got = _logits(model, batch)
    assert torch.isfinite(got).all() and got.shape == (3, 3)
    torch.testing.assert_close(got, _logits(masked, batch), rtol=1e-5, atol=1e-6)


def test_round_trip_through_save_pretrained_and_layer_shapes(pruned, tmp_path):
    model, report = pruned
    assert report["layer_shapes"] == text_shapes.layer_shapes(model)
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    spec = json.loads(json.dumps({"layer_shapes": report["layer_shapes"]}))  # as spec.json holds it
    loaded = text_shapes.load_pruned(tmp_path, spec)
    assert not loaded.training
    assert loaded.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    batch = _batch(seed=7)
    assert torch.equal(_logits(loaded, batch), _logits(model, batch))
    assert not list(tmp_path.glob("*.bin"))  # nothing pickled was written or read
    # KFP passes dict parameters through protobuf Struct: integral floats are accepted
    floats = {k: {f: float(v) if isinstance(v, int) else v for f, v in s.items()}
              for k, s in spec["layer_shapes"].items()}
    rebuilt = text_shapes.rebuild(tmp_path, floats)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_the_plain_loader_and_bad_shapes_are_refused(pruned, tmp_path):
    model, report = pruned
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    with pytest.raises(ModelpressError, match="no layer_shapes"):
        text_shapes.load_pruned(tmp_path, {"format": "hf-text"})
    with pytest.raises(ModelpressError, match="cannot load it"):  # the unpruned sizes never load silently
        text.load_hf(str(tmp_path))
    wrong = json.loads(json.dumps(report["layer_shapes"]))
    wrong["bert.encoder.layer.0.intermediate.dense"]["out_features"] = 40
    wrong["bert.encoder.layer.0.output.dense"]["in_features"] = 40
    with pytest.raises(ModelpressError, match="does not fit the layer_shapes"):
        text_shapes.load_pruned(tmp_path, {"layer_shapes": wrong})
    bad = {**report["layer_shapes"], "bert.encoder.layer.0.attention.self": {"type": "attention", "heads": 3,
                                                                            "head_size": 8}}
    with pytest.raises(ModelpressError, match="3 heads of 8"):
        text_shapes.rebuild(tmp_path, bad)
    with pytest.raises(ModelpressError, match="positive integer"):
        text_shapes.rebuild(model.config, {"classifier": {"type": "Linear", "in_features": 0, "out_features": 3}})


def test_the_pruned_model_exports_to_onnx(pruned, tmp_path):
    model, _ = pruned
    info = export_text_onnx(model, str(tmp_path / "model.onnx"), max_length=16)  # verified against torch inside
    assert info["max_abs_diff"] < 1e-4 and (tmp_path / "model.onnx").exists()


def test_extreme_amount_keeps_one_head_and_one_neuron(bert):
    model, report = prune_text_model(bert, amount=0.99, importance="l1")
    for row, layer in zip(report["layers"], model.bert.encoder.layer):
        assert row["heads_after"] == layer.attention.self.num_attention_heads == 1
        assert row["intermediate_after"] == layer.intermediate.dense.out_features == 1
    assert torch.isfinite(_logits(model, _batch())).all()


def test_distilbert_is_pruned_and_rebuilt(tmp_path):
    tf = text._transformers()
    config = tf.DistilBertConfig(vocab_size=100, num_labels=2, n_layers=2, dim=32, n_heads=4, hidden_dim=64,
                                 max_position_embeddings=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = tf.DistilBertForSequenceClassification(config).eval()
    pruned, report = prune_text_model(model, amount=0.25)
    assert [(r["heads_after"], r["intermediate_after"]) for r in report["layers"]] == [(3, 48), (3, 48)]
    attn = pruned.distilbert.transformer.layer[0].attention
    assert (attn.n_heads, attn.q_lin.out_features, attn.out_lin.in_features) == (3, 24, 24)
    pruned.save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = text_shapes.load_pruned(tmp_path, {"layer_shapes": report["layer_shapes"]})
    batch = {k: v for k, v in _batch().items() if k != "token_type_ids"}
    assert torch.equal(_logits(loaded, batch), _logits(pruned, batch))


class _BagClassifier(nn.Module):
    """A text classifier with no self-attention at all."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=50, max_position_embeddings=16, is_decoder=False)
        self.embed = nn.EmbeddingBag(50, 16)
        self.classifier = nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask=None):
        return self.classifier(self.embed(input_ids))


class _DetachedSelfAttention(nn.Module):
    """BERT's attribute names, but the query leaves the autograd graph, so Torch-Pruning cannot
    couple it with the key and value."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.num_attention_heads, self.attention_head_size = heads, dim // heads

    def forward(self, x):
        shape = (*x.shape[:2], -1, self.attention_head_size)
        q = self.query(x).detach().view(shape).transpose(1, 2)
        k, v = (f(x).view(shape).transpose(1, 2) for f in (self.key, self.value))
        att = torch.softmax(q @ k.transpose(2, 3), -1) @ v
        return att.transpose(1, 2).reshape(*x.shape[:2], -1)


class _DetachedEncoder(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=50, max_position_embeddings=16, is_decoder=False)
        self.embed = nn.Embedding(50, dim)
        self.attention = nn.Module()
        self.attention.self, self.attention.output = _DetachedSelfAttention(dim), nn.Module()
        self.attention.output.dense = nn.Linear(dim, dim)
        self.intermediate, self.output = nn.Module(), nn.Module()
        self.intermediate.dense, self.output.dense = nn.Linear(dim, 32), nn.Linear(32, dim)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        h = h + self.attention.output.dense(self.attention.self(h))
        h = h + self.output.dense(torch.relu(self.intermediate.dense(h)))
        return self.classifier(h[:, 0])


@pytest.mark.parametrize("model, why", [(_BagClassifier(), "no self-attention module"),
                                        (_DetachedEncoder(), "Torch-Pruning")],
                         ids=["no-attention", "untraceable-attention"])
def test_a_model_it_cannot_prune_is_refused_with_the_reason(model, why):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelpressError, match=f"structured pruning of {type(model).__name__} is not supported: "
                                              f".*{why}"):
        prune_text_model(model, amount=0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # left as it was


@pytest.mark.parametrize("amount", [0, 1, -0.1, 1.5, float("nan"), True, "0.5"])
def test_a_bad_amount_is_refused(bert, amount):
    with pytest.raises(ModelpressError, match="strictly between 0 and 1"):
        prune_text_model(bert, amount=amount)


def test_bad_importance_and_example_inputs_are_refused(bert):
    with pytest.raises(ModelpressError, match="importance must be one of"):
        prune_text_model(bert, amount=0.5, importance="taylor")
    with pytest.raises(ModelpressError, match="dict of tensors"):
        prune_text_model(bert, amount=0.5, example_inputs=[1, 2, 3])
