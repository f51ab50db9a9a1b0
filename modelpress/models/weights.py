"""A user's checkpoint into a built model, and the model's output layer (its "head").

Read without unpickling code: ``.safetensors`` with safetensors, anything else with
``torch.load(weights_only=True)``. A whole pickled model is refused with the two lines that
turn it into a state dict.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.models.architectures import unwrap

# checkpoints written by training loops often wrap the state dict in one of these
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
# DDP (`module.`) and torch.compile (`_orig_mod.`) prefix every key
PREFIXES = ("module.", "_orig_mod.")
SHOWN = 4  # how many of each kind of problem an error names

CONVERT = ('  model = torch.load("model.pt", weights_only=False)  # once, on a machine where you trust the file\n'
           '  torch.save(model.state_dict(), "model_state.pth")')


# ----------------------------------------------------------------------------- head

def head(model: nn.Module) -> tuple[str, nn.Module]:
    """The output layer of ``unwrap(model)`` as ``(qualified name, module)``.

    The name is relative to the unwrapped network (no ``net.`` prefix from InputNormalised),
    i.e. the prefix of its keys in ``unwrap(model).state_dict()``. Looked for in this order:
    timm's ``get_classifier()``; torchvision's ``fc``, ``classifier`` (its last Linear, or
    Conv2d for SqueezeNet, when it is a Sequential), ``head`` / ``heads``; else the last
    ``nn.Linear`` in module order.
    """
    net = unwrap(model)
    names = {id(m): n for n, m in net.named_modules()}
    getter = getattr(net, "get_classifier", None)
    if callable(getter):
        try:
            found = getter()
        except Exception:  # noqa: BLE001 -- a user module's get_classifier is only a hint
            found = None
        if isinstance(found, (tuple, list)) and found:  # distilled timm models: (head, head_dist)
            found = found[0]
        if isinstance(found, nn.Module) and id(found) in names and any(True for _ in found.parameters()):
            return names[id(found)], found
    for attr in ("fc", "classifier", "head", "heads"):
        found = getattr(net, attr, None)
        if isinstance(found, nn.Module) and id(found) in names:
            layer = _last_layer(found)
            if layer is not None:
                return names[id(layer)], layer
    layer = _last_layer(net, (nn.Linear,))
    if layer is None:
        raise ModelpressError(f"{type(net).__name__} has no nn.Linear layer to act as its output layer; "
                              "replace_head needs one")
    return names[id(layer)], layer


def _last_layer(module: nn.Module, kinds=(nn.Linear, nn.Conv2d)) -> nn.Module | None:
    if isinstance(module, kinds):
        return module
    layers = [m for m in module.modules() if isinstance(m, kinds)]
    linear = [m for m in layers if isinstance(m, nn.Linear)]
    return (linear or layers or [None])[-1]


# -------------------------------------------------------------------------- reading

def read_state_dict(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors by name, "safetensors" | "state_dict") from a user's weights file."""
    file = local_path(path)
    if not file.is_file():
        raise ModelpressError(f"weights {path!r}: no such file")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file)), "safetensors"
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelpressError(f"weights {path!r} is not a readable safetensors file: {exc}") from None
    try:
        loaded = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))  # a class the file would construct
        if not found:
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
            raise ModelpressError(f"weights {path!r} is not a torch checkpoint or a safetensors file "
                                  f"({detail.group(1) if detail else 'unreadable'}); save weights with "
                                  "torch.save(model.state_dict(), path) or safetensors") from None
        raise ModelpressError(f"weights {path!r} is a whole pickled model (it holds a pickled {found.group(1)}), "
                              f"not a state dict; loading it would run code from the file. Convert it once:\n"
                              f"{CONVERT}\nand give model_state.pth as weights") from None
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for a file that is not a checkpoint
        raise ModelpressError(f"weights {path!r} is not a torch checkpoint or a safetensors file "
                              f"({type(exc).__name__}: {exc}); save weights with "
                              "torch.save(model.state_dict(), path) or safetensors") from None
    return _tensors(loaded, path), "state_dict"


def _tensors(loaded, path: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in WRAPPER_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and not _all_tensors(loaded):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise ModelpressError(f"weights {path!r} holds {type(loaded).__name__}, not a state dict (a mapping of "
                              f"tensor names to tensors). If it is a whole model, convert it once:\n{CONVERT}")
    others = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise ModelpressError(f"weights {path!r} mixes tensors with other entries {sorted(map(str, others))[:SHOWN]}; "
                              f"give the state dict alone, or wrap it as {{'state_dict': ...}} "
                              f"(also accepted: {list(WRAPPER_KEYS)})")
    state = dict(loaded)
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _all_tensors(mapping: Mapping) -> bool:
    return all(isinstance(v, torch.Tensor) for v in mapping.values())


# -------------------------------------------------------------------------- loading

def load_weights(model: nn.Module, path: str, *, replace_head: bool = False,
                 log: Callable[[str], None] = print) -> dict:
    """Load a user's checkpoint into ``unwrap(model)``; refuse any key or shape mismatch.

    ``replace_head`` drops the checkpoint's output layer (see ``head``) so the one built
    for the dataset's classes stays (transfer learning). Returns what was loaded.
    """
    state, fmt = read_state_dict(path)
    net = unwrap(model)
    expected = net.state_dict()
    inner = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    if len(inner) == len(state) and set(inner) == set(expected) and set(state) != set(expected):
        state = inner  # a modelpress artifact's weights.safetensors: the network inside InputNormalised
    replaced = None
    if replace_head:
        replaced, layer = head(net)
        dropped = sorted(k for k in state if k.startswith(replaced + "."))
        for k in dropped:
            del state[k]
        kept = {k: tuple(v.shape) for k, v in expected.items() if k.startswith(replaced + ".")}
        log(f"[weights] replace_head: {replaced} stays as built for this dataset {kept}; dropped "
            f"{len(dropped)} checkpoint tensors {dropped}")
    _check_fit(state, expected, path, skip=(replaced + ".") if replaced else None)
    # strict=False: the checks above are the strict part; BatchNorm's num_batches_tracked may be absent
    net.load_state_dict(state, strict=False)
    log(f"[weights] loaded {len(state)} tensors from {path} ({fmt})")
    return {"weights": path, "format": fmt, "loaded_tensors": len(state), "replaced_head": replaced}


def _check_fit(state: dict, expected: dict, path: str, skip: str | None) -> None:
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")
               and not (skip and k.startswith(skip))]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in state if k in expected and state[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = [f"{label} {len(items)}: {', '.join(items[:SHOWN])}{' ...' if len(items) > SHOWN else ''}"
             for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", shapes))
             if items]
    channels = [(tuple(state[k].shape)[1], tuple(expected[k].shape)[1]) for k in state
                if k in expected and state[k].ndim == 4 and state[k].shape[0] == expected[k].shape[0]
                and state[k].shape[2:] == expected[k].shape[2:] and state[k].shape[1] != expected[k].shape[1]]
    hint = (f"; the checkpoint's first convolution takes {channels[0][0]} input channels and the data has "
            f"{channels[0][1]}: set channels: {channels[0][0]} (grey images are repeated to RGB)"
            if channels and channels[0][0] in (1, 3) else "")
    raise ModelpressError(f"weights {path!r} do not fit this model: {'; '.join(parts)}{hint}. Set architecture "
                          "and model_args to the model the checkpoint was saved from; if only the output layer "
                          "differs (another number of classes), set replace_head: true")
