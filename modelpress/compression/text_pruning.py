"""Structured pruning of Hugging Face text classifiers: whole attention heads and feed-forward
neurons removed with Torch-Pruning's dependency graph, so the saved model is really smaller.

Every encoder layer loses about ``amount`` of its heads and of its intermediate neurons (at
least one of each stays). The hidden size stays: embeddings, every layer's output projections,
the pooler and the classifier are ignored, so residual streams, LayerNorms and the head keep
their widths. Heads are removed whole (``prune_num_heads``; ``prune_head_dims=False``), since
the attention forwards reshape to a fixed head size. The pruned model is rebuilt from
config.json + ``layer_shapes`` (models.text_shapes); transformers 5 has no ``prune_heads``.

Supported: the BERT layout (BERT, RoBERTa, ELECTRA, ...: attention.self.query/key/value,
intermediate.dense, output.dense) and DistilBERT's (attention.q_lin/k_lin/v_lin, ffn.lin1/lin2).
Anything else, or a model Torch-Pruning fails on, is a ModelpressError whose message reads as a
skip reason: "structured pruning of <Class> is not supported: <why>".
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.models import text_shapes
from modelpress.export.text_export import eager_attention
from modelpress.models.text import model_inputs

IMPORTANCE = {"l2": 2, "l1": 1}  # the norm of each head's / neuron's weights across its coupled layers
_EXAMPLE_LENGTH = 16


def _refuse(model: nn.Module, why: str) -> ModelpressError:
    return ModelpressError(f"structured pruning of {type(model).__name__} is not supported: {why}")


def check_amount(amount) -> float:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) \
            or not 0.0 < amount < 1.0:
        raise ModelpressError(f"pruning amount must be a share strictly between 0 and 1 (e.g. 0.3 removes about "
                              f"30% of the heads and feed-forward neurons of every layer); got {amount!r}")
    return float(amount)


def _check_supported(model: nn.Module) -> list[dict]:
    """The encoder layers to prune, or a refusal saying why this model cannot be pruned."""
    config = getattr(model, "config", None)
    if config is None:
        raise _refuse(model, "it is not a Hugging Face transformers model (no .config); structured pruning "
                             "knows BERT- and DistilBERT-style sequence classifiers")
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise _refuse(model, "it is a decoder (causal or cross-attention), whose caches and cross-attention "
                             "this pruner does not resize; use an encoder sequence classifier")
    try:
        layers = text_shapes.encoder_layers(model)
    except ModelpressError as exc:
        raise _refuse(model, str(exc)) from None
    if not layers:
        families = ", ".join(f"{lay.family} ({lay.attention}.{'/'.join(lay.qkv)})" for lay in text_shapes.LAYOUTS)
        raise _refuse(model, f"it has no self-attention module of a layout this pruner knows: {families}")
    if "input_ids" not in model_inputs(model):
        raise _refuse(model, "its forward takes no input_ids")
    return layers


def _example(model: nn.Module, given) -> dict[str, torch.Tensor]:
    """The batch the dependency graph is traced with: the caller's, or 2 rows of random ids, the
    second half-padded, so the attention mask really masks while tracing."""
    if given is not None:
        if not isinstance(given, dict) or not given or \
                not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in given.items()):
            raise ModelpressError("example_inputs must be a dict of tensors, e.g. {'input_ids': ..., "
                                  "'attention_mask': ...}, as the tokenizer returns them (return_tensors='pt')")
        return dict(given)
    config = model.config
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int):
        raise ModelpressError(f"{type(model).__name__}.config has no vocab_size to draw example token ids "
                              "from; pass example_inputs (a tokenizer batch)")
    length = max(2, min(_EXAMPLE_LENGTH, int(getattr(config, "max_position_embeddings", _EXAMPLE_LENGTH))))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, max(2, vocab), (2, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {k: batch[k] for k in model_inputs(model)}


def _logits(out) -> torch.Tensor:
    """The tensor the dependency graph is traced back from."""
    if isinstance(out, torch.Tensor):
        return out.sum()
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    return logits.sum()


def _plan(layers: list[dict], amount: float) -> list[dict]:
    """Per layer: how many heads and neurons go, rounded to nearest, at least one of each kept."""
    plan = []
    for layer in layers:
        h = text_shapes.heads(layer["attention"], layer["layout"])
        n = layer["ffn_in"].out_features
        plan.append({"heads_before": h, "heads_after": h - min(h - 1, int(amount * h + 0.5)),
                     "intermediate_before": n, "intermediate_after": max(1, n - int(amount * n + 0.5))})
    return plan


def _pruner(model: nn.Module, layers: list[dict], plan: list[dict], inputs: dict, p: int):
    """Torch-Pruning's pruner set up to remove exactly the planned heads and neurons per layer.

    Local (per-layer) ranking. Torch-Pruning removes ceil(ratio * heads) heads and keeps
    int(ratio' * neurons) neurons, so the ratios are the planned counts offset by half a unit
    (no float rounding can move them). The q/k/v ratio is 0.5 only because Torch-Pruning
    ranks heads only in a group whose channel ratio is non-zero; prune_head_dims=False keeps
    every head's dimensions whatever it is."""
    import torch_pruning as tp

    num_heads, ratios, head_ratios, roots = {}, {}, {}, set()
    for layer, want in zip(layers, plan):
        attn, layout = layer["attention"], layer["layout"]
        h, removed = want["heads_before"], want["heads_before"] - want["heads_after"]
        for attr in layout.qkv:
            linear = getattr(attn, attr)
            num_heads[linear] = h
            ratios[linear] = 0.5
            head_ratios[linear] = (removed - 0.5) / h if removed else 0.0
            roots.add(linear)
        n, keep = want["intermediate_before"], want["intermediate_after"]
        ratios[layer["ffn_in"]] = 1.0 - (keep + 0.5) / n if keep < n else 0.0
        roots.add(layer["ffn_in"])
    # every other layer is ignored: a group reaching an ignored layer's outputs (the hidden size,
    # the pooler, the classifier) is never pruned; the output projections still lose inputs
    ignored = [m for m in model.modules() if not list(m.children()) and m not in roots]
    return tp.pruner.BasePruner(
        model, inputs, importance=tp.importance.GroupMagnitudeImportance(p=p), pruning_ratio=0.0,
        pruning_ratio_dict=ratios, num_heads=num_heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio_dict=head_ratios, ignored_layers=ignored, output_transform=_logits,
        # fresh dicts: Torch-Pruning's defaults are shared mutable dicts it writes modules into
        in_channel_groups={}, out_channel_groups={})


def _removed_heads(pruner, group, layers: list[dict]) -> dict[int, list[int]]:
    """Layer index -> original indices of the heads this group removes (read off the query layer)."""
    queries = {id(getattr(lay["attention"], lay["layout"].qkv[0])): i for i, lay in enumerate(layers)}
    out = {}
    for dep, idxs in group:
        i = queries.get(id(dep.target.module))
        if i is not None and pruner.DG.is_out_channel_pruning_fn(dep.handler):
            size = int(layers[i]["attention"].attention_head_size)
            out[i] = sorted({int(getattr(j, "idx", j)) // size for j in idxs})
    return out


def _check_pruned(model: nn.Module, layers: list[dict], plan: list[dict]) -> None:
    """Every layer lost exactly the planned heads (from q, k and v alike) and neurons (from both
    feed-forward layers); otherwise the dependency graph did not couple the layers as the layout
    says, and the model is refused rather than saved half-pruned."""
    for i, (layer, want) in enumerate(zip(layers, plan)):
        attn, layout = layer["attention"], layer["layout"]
        widths = {a: getattr(attn, a).out_features for a in layout.qkv}
        ffn = (layer["ffn_in"].out_features, layer["ffn_out"].in_features)
        heads = want["heads_after"] * int(attn.attention_head_size)
        if set(widths.values()) != {heads} or set(ffn) != {want["intermediate_after"]}:
            raise _refuse(model, f"Torch-Pruning left layer {i} ({layer['block'] or 'the model'}) with q/k/v widths "
                                 f"{widths} and feed-forward widths {list(ffn)}, where {want['heads_after']} heads "
                                 f"({heads} wide) and {want['intermediate_after']} neurons were planned: its "
                                 f"dependency graph does not couple this model's layers as the {layout.family} "
                                 "layout expects")


def _run(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)


def prune_text_model(model: nn.Module, *, amount: float, example_inputs: dict[str, torch.Tensor] | None = None,
                     importance: str = "l2") -> tuple[nn.Module, dict]:
    """Remove about ``amount`` of the attention heads and feed-forward neurons of every encoder layer.

    The model given is left as it was; the pruned copy (eval mode) comes back with a report::

        {"model_class", "amount", "importance",
         "layers": [{"layer", "name", "heads_before", "heads_after", "heads_removed" (original head
                     indices), "intermediate_before", "intermediate_after"}, ...],
         "heads_before", "heads_after", "intermediate_before", "intermediate_after" (summed over layers),
         "params_before", "params_after", "params_ratio" (after / before),
         "layer_shapes" (text_shapes.layer_shapes: what spec.json needs to rebuild it)}

    ``example_inputs`` (a tokenizer batch) is what the dependency graph is traced with; a random
    padded batch by default. ``importance``: "l2" or "l1" norm of each head's / neuron's weights.
    A model this cannot prune is a ModelpressError naming the class and the reason.
    """
    amount = check_amount(amount)
    if importance not in IMPORTANCE:
        raise ModelpressError(f"importance must be one of {sorted(IMPORTANCE)}, got {importance!r}")
    _check_supported(model)
    pruned = copy.deepcopy(model).eval()  # a failure half-way leaves the caller's model whole
    layers = _check_supported(pruned)
    inputs = _example(pruned, example_inputs)
    try:
        reference = _run(pruned, inputs)
    except Exception as exc:  # noqa: BLE001 -- the caller's batch may not fit the model
        why = f"{type(exc).__name__}: {str(exc)[:300]}"
        if example_inputs is None:
            raise _refuse(model, f"it does not run on a batch of input_ids / attention_mask ({why})") from None
        raise ModelpressError(f"{type(model).__name__} cannot run on example_inputs ({why}); give a tokenizer "
                              "batch of the inputs its forward takes (input_ids, attention_mask, ...)") from None
    plan = _plan(layers, amount)
    params_before = sum(p.numel() for p in pruned.parameters())
    removed: dict[int, list[int]] = {}
    # the graph is traced through autograd: frozen weights would hide their layers from it
    trainable = {name: p.requires_grad for name, p in pruned.named_parameters()}
    pruned.requires_grad_(True)
    try:
        # eager attention: plain matmuls, which the dependency graph couples q, k and v through
        with eager_attention(pruned), warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")  # Torch-Pruning warns about ops it treats as element-wise
            pruner = _pruner(pruned, layers, plan, inputs, IMPORTANCE[importance])
            for group in pruner.step(interactive=True):
                removed.update(_removed_heads(pruner, group, layers))
                group.prune()
    except Exception as exc:  # noqa: BLE001 -- Torch-Pruning fails in many ways on graphs it does not know
        raise _refuse(model, f"Torch-Pruning failed on it ({type(exc).__name__}: {str(exc)[:300]})") from None
    for name, p in pruned.named_parameters():
        p.requires_grad_(trainable.get(name, True))
    _check_pruned(model, layers, plan)
    for layer, want in zip(layers, plan):
        text_shapes.set_heads(layer["attention"], layer["layout"], want["heads_after"], layer["attention_name"])
    try:
        logits = _run(pruned, inputs)
    except Exception as exc:  # noqa: BLE001
        raise _refuse(model, f"the pruned model no longer runs ({type(exc).__name__}: {str(exc)[:300]})") from None
    if logits.shape != reference.shape or not torch.isfinite(logits).all():
        raise _refuse(model, f"the pruned model gives logits of shape {list(logits.shape)} (finite: "
                             f"{bool(torch.isfinite(logits).all())}) where the model gave {list(reference.shape)}")
    params_after = sum(p.numel() for p in pruned.parameters())
    per_layer = [{"layer": i, "name": lay["block"], "heads_before": want["heads_before"],
                  "heads_after": want["heads_after"], "heads_removed": removed.get(i, []),
                  "intermediate_before": want["intermediate_before"], "intermediate_after": want["intermediate_after"]}
                 for i, (lay, want) in enumerate(zip(layers, plan))]
    report = {"model_class": type(model).__name__, "amount": amount, "importance": importance, "layers": per_layer}
    for key in ("heads_before", "heads_after", "intermediate_before", "intermediate_after"):
        report[key] = sum(row[key] for row in per_layer)
    report.update({"params_before": params_before, "params_after": params_after,
                   "params_ratio": params_after / params_before,
                   "layer_shapes": text_shapes.layer_shapes(pruned)})
    return pruned.eval(), report
