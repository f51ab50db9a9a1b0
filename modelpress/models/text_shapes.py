"""Structurally pruned text classifiers, rebuilt without pickles.

transformers 5 has no ``prune_heads`` and a config holds one head count and one intermediate
size for all layers, with head size = hidden / heads; so a BERT whose layers lost heads and
feed-forward neurons cannot be described by config.json alone. Its sizes go into spec.json as
``layer_shapes``, in the torch artifact's format (artifact.layer_shapes) plus one entry per
self-attention module::

    {"bert.encoder.layer.0.attention.self.query": {"type": "Linear", "in_features": 32, "out_features": 16},
     ... every nn.Linear ...,
     "bert.encoder.layer.0.attention.self": {"type": "attention", "heads": 2, "head_size": 8}, ...}

``rebuild`` builds the class from config.json (random weights, nothing downloaded), resizes the
layers to those shapes and fixes the attention modules' head counts; ``load_pruned`` then
loads model.safetensors strictly. config.json keeps the unpruned sizes.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, read_json
from modelpress.models.artifact import apply_layer_shapes
from modelpress.models.text import _quiet, _transformers, check_folder

ATTENTION = "attention"
LINEAR = "Linear"


@dataclass(frozen=True)
class Layout:
    """Where one encoder family keeps its self-attention and feed-forward layers."""

    family: str
    qkv: tuple[str, str, str]  # the query, key and value nn.Linear attributes of the attention module
    heads: str  # the attribute holding the head count
    width: str  # the attribute holding heads * head_size (the q/k/v output width)
    attention: str  # the attention module's name inside its encoder layer
    ffn_in: str  # the feed-forward layers' names inside the encoder layer: hidden -> intermediate -> hidden
    ffn_out: str


# BERT's naming is shared by the models copied from it (RoBERTa, ELECTRA, XLM-R, CamemBERT, ...)
LAYOUTS = (
    Layout("bert", ("query", "key", "value"), "num_attention_heads", "all_head_size", "attention.self",
           "intermediate.dense", "output.dense"),
    Layout("distilbert", ("q_lin", "k_lin", "v_lin"), "n_heads", "dim", "attention", "ffn.lin1", "ffn.lin2"),
)


def layout_of(name: str, module: nn.Module) -> Layout | None:
    """The layout a module is the self-attention of, or None."""
    for layout in LAYOUTS:
        if ((name == layout.attention or name.endswith("." + layout.attention))
                and all(isinstance(getattr(module, a, None), nn.Linear) for a in layout.qkv)
                and isinstance(getattr(module, layout.heads, None), int)
                and isinstance(getattr(module, "attention_head_size", None), int)):
            return layout
    return None


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module, Layout]]:
    """(name, module, layout) of every self-attention module of a known layout, in model order."""
    found = []
    for name, m in model.named_modules():
        layout = layout_of(name, m)
        if layout is not None:
            found.append((name, m, layout))
    return found


def encoder_layers(model: nn.Module) -> list[dict]:
    """Per encoder layer: its attention module and feed-forward linears, found by the layout's names.

    A layer of a known attention layout without the feed-forward layers where the layout puts
    them (ALBERT, say) is a ModelpressError: pruning and rebuilding would guess otherwise."""
    modules = dict(model.named_modules())
    layers = []
    for name, attn, layout in attention_modules(model):
        block = name[:-len(layout.attention)].rstrip(".")
        prefix = f"{block}." if block else ""
        ffn_in, ffn_out = modules.get(prefix + layout.ffn_in), modules.get(prefix + layout.ffn_out)
        if not (isinstance(ffn_in, nn.Linear) and isinstance(ffn_out, nn.Linear)):
            raise ModelpressError(f"{type(model).__name__}: the attention module {name} has no feed-forward "
                                  f"layers {prefix}{layout.ffn_in} / {prefix}{layout.ffn_out} (nn.Linear), "
                                  f"where the {layout.family} layout keeps them")
        layers.append({"block": block, "attention_name": name, "attention": attn, "layout": layout,
                       "ffn_in_name": prefix + layout.ffn_in, "ffn_in": ffn_in, "ffn_out": ffn_out})
    return layers


def heads(attn: nn.Module, layout: Layout) -> int:
    return int(getattr(attn, layout.heads))


def set_heads(attn: nn.Module, layout: Layout, n: int, name: str = "") -> None:
    """Make an attention module's attributes agree with its q/k/v width after whole heads were removed.

    The forwards reshape to (-1, attention_head_size), so the head size must stay; the head
    count and width attributes are what anything reading the module (exporters, people) sees."""
    size = int(attn.attention_head_size)
    widths = {a: getattr(attn, a).out_features for a in layout.qkv}
    if n < 1 or any(w != n * size for w in widths.values()):
        raise ModelpressError(f"attention {name or type(attn).__name__}: {n} heads of {size} need q/k/v "
                              f"widths of {n * size}, but they are {widths}; layer_shapes and the model disagree")
    setattr(attn, layout.heads, n)
    setattr(attn, layout.width, n * size)


def layer_shapes(model: nn.Module) -> dict[str, dict]:
    """The JSON-able sizes a pruned text classifier is rebuilt from (format: this module's docstring)."""
    shapes = {name: {"type": LINEAR, "in_features": m.in_features, "out_features": m.out_features}
              for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, attn, layout in attention_modules(model):
        shapes[name] = {"type": ATTENTION, "heads": heads(attn, layout), "head_size": int(attn.attention_head_size)}
    return shapes


def _count(value, where: str) -> int:
    """A positive integer; KFP passes dict parameters through protobuf Struct, where numbers are floats."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelpressError(f"layer_shapes {where} must be a positive integer, got {value!r}; record the "
                              "shapes with text_shapes.layer_shapes(pruned_model)")
    return value


def _checked(shapes) -> tuple[dict, dict]:
    """(Linear entries, attention entries), with integer sizes; anything else is refused."""
    if not isinstance(shapes, dict) or not shapes:
        raise ModelpressError("layer_shapes must be a non-empty mapping of module name to sizes, as "
                              "text_shapes.layer_shapes(pruned_model) returns it")
    linear, attention = {}, {}
    for name, s in shapes.items():
        kind = s.get("type") if isinstance(s, dict) else None
        if kind == LINEAR:
            linear[name] = {"type": LINEAR, "in_features": _count(s.get("in_features"), f"{name}.in_features"),
                            "out_features": _count(s.get("out_features"), f"{name}.out_features")}
        elif kind == ATTENTION:
            attention[name] = {"heads": _count(s.get("heads"), f"{name}.heads"),
                               "head_size": _count(s.get("head_size"), f"{name}.head_size")}
        else:
            raise ModelpressError(f"layer_shapes[{name!r}] has type {kind!r}; a text model's entries are "
                                  f"{LINEAR!r} or {ATTENTION!r} (see text_shapes.layer_shapes)")
    return linear, attention


def apply_shapes(model: nn.Module, shapes: dict) -> nn.Module:
    """Resize ``model``'s layers in place to ``shapes`` and fix its attention modules (weights are
    left freshly initialised: load them afterwards)."""
    linear, attention = _checked(shapes)
    apply_layer_shapes(model, linear)
    found = {name: (m, layout) for name, m, layout in attention_modules(model)}
    missing = sorted(set(attention) - set(found))
    if missing:
        raise ModelpressError(f"layer_shapes names attention modules {missing[:3]} that "
                              f"{type(model).__name__} does not have; the spec and config.json disagree")
    for name, s in attention.items():
        attn, layout = found[name]
        if int(attn.attention_head_size) != s["head_size"]:
            raise ModelpressError(f"layer_shapes gives {name} heads of size {s['head_size']}, but config.json "
                                  f"builds heads of size {attn.attention_head_size}; the spec and config.json "
                                  "disagree (pruning removes whole heads, never head dimensions)")
        set_heads(attn, layout, s["heads"], name)
    return model


def _config(config_dir_or_config):
    """A transformers config: a copy of the one given, or read from a folder's (or file's) config.json
    without downloading and without running code from it."""
    tf = _transformers()
    if isinstance(config_dir_or_config, tf.PretrainedConfig):
        return copy.deepcopy(config_dir_or_config)
    if not isinstance(config_dir_or_config, (str, os.PathLike)):
        raise ModelpressError(f"rebuild takes a transformers config or the folder holding config.json, not "
                              f"{type(config_dir_or_config).__name__}")
    path = local_path(config_dir_or_config)
    file = path if path.is_file() else path / "config.json"
    if not file.exists():
        raise ModelpressError(f"no config.json at {config_dir_or_config}; give the folder that "
                              "model.save_pretrained(folder) wrote")
    try:
        data = read_json(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelpressError(f"{file} is not valid JSON ({exc}); write it with save_pretrained") from None
    if not isinstance(data, dict) or data.get("auto_map"):
        raise ModelpressError(f"{file} is not a config of a model class that ships with transformers (it is "
                              "not a JSON object, or has auto_map, i.e. needs the checkpoint's own code, "
                              "which modelpress never runs)")
    try:
        return tf.AutoConfig.from_pretrained(str(file.parent), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelpressError(f"transformers {tf.__version__} cannot read {file} ({type(exc).__name__}: "
                              f"{str(exc)[:300]}); its model_type must be one transformers ships") from None


def rebuild(config_dir_or_config, shapes: dict) -> nn.Module:
    """The sequence classifier of ``config_dir_or_config`` (a config, or a folder with config.json),
    resized to ``shapes``: its state_dict has the pruned model's keys and shapes. Eval mode,
    random weights; the caller's random stream is left as it was."""
    tf = _transformers()
    config = _config(config_dir_or_config)
    _checked(shapes)  # refuse bad shapes before building a possibly large model
    try:
        with torch.random.fork_rng(devices=[]), _quiet():
            model = tf.AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError) as exc:
        raise ModelpressError(f"transformers cannot build a sequence classifier from this config "
                              f"({type(exc).__name__}: {str(exc)[:300]})") from None
    return apply_shapes(model, shapes).eval()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards its index names; never a pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = sorted(set(read_json(index)["weight_map"].values())) if index.exists() else ["model.safetensors"]
    state = {}
    for f in files:
        if Path(f).name != f or not f.endswith(".safetensors"):
            raise ModelpressError(f"{index} names {f!r}, not a .safetensors file in the folder")
        try:
            state.update(load_file(str(path / f)))
        except (SafetensorError, OSError) as exc:
            raise ModelpressError(f"{path / f} is not a readable safetensors file ({exc}); save the model "
                                  "again with save_pretrained(folder, safe_serialization=True)") from None
    return state


def load_pruned(folder, spec: dict) -> nn.Module:
    """The pruned model saved in ``folder`` (config.json + model.safetensors, as save_pretrained writes
    them), rebuilt from ``spec["layer_shapes"]`` and loaded strictly; eval mode."""
    shapes = spec.get("layer_shapes") if isinstance(spec, dict) else None
    if not shapes:
        raise ModelpressError(f"the spec of {folder} has no layer_shapes, so its model was not structurally "
                              "pruned; load it with models.text.load_text_model")
    path = check_folder(str(folder))  # config.json + safetensors present, no auto_map, no pickles only
    model = rebuild(path, shapes)
    state = _weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelpressError(f"{folder}: model.safetensors does not fit the layer_shapes in its spec "
                              f"({str(exc)[:400]}); save the pruned model and its "
                              "text_shapes.layer_shapes(model) together") from None
    return model.eval()


def attention_size(model: nn.Module) -> tuple[int, int]:
    """(heads, heads x head size) of the first self-attention: what ONNX Runtime's attention fusion
    must be told. A pruned model's width is below its hidden size (config.json still says the
    unpruned sizes); a model of an unknown layout answers from its config."""
    found = attention_modules(model)
    if not found:
        return int(model.config.num_attention_heads), int(model.config.hidden_size)
    _, attn, layout = found[0]
    n = heads(attn, layout)
    return n, n * int(attn.attention_head_size)
