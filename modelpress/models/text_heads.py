"""A Hugging Face classifier's head against the dataset: which output is which class, a fresh head
when asked for, and how many tokens its position embeddings take.

A checkpoint that names its classes (``config.id2label``) is matched to the dataset's class order
by reordering the classifier's rows; one whose names are other classes is refused unless
``replace_head``; one that names none (``LABEL_0``...) is taken in the dataset's order, and the
log says so. Without this, `save_text_model` would write the dataset's names over the
checkpoint's and every served label could be the wrong one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from modelpress.core.errors import ModelpressError

# models whose position ids start after the padding index: 514 position rows hold 512 tokens
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod")


def usable_positions(config) -> int | None:
    """The most tokens the model's position embeddings take (None: the config does not say)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return None
    offset = (int(getattr(config, "pad_token_id", 1) or 1) + 1) if config.model_type in OFFSET_POSITIONS else 0
    return int(positions) - offset


def check_length(config, max_length: int, source: str) -> None:
    usable = usable_positions(config)
    if usable is not None and max_length > usable:
        raise ModelpressError(f"max_length {max_length} is more tokens than {source} has position embeddings for "
                              f"({usable}); set max_length to at most {usable}")


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The Linear that produces the logits: the last one with one output per label."""
    n = int(model.config.num_labels)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == n]
    if not found:
        raise ModelpressError(f"{type(model).__name__} has no Linear layer with {n} outputs to be its classifier; "
                              "save a sequence classifier (AutoModelForSequenceClassification)")
    return found[-1]


def _generic(names: list[str]) -> bool:
    return all(name == f"LABEL_{i}" for i, name in enumerate(names))


def align_head(model: nn.Module, class_names: list[str], *, fresh: list[str], replace_head: bool, source: str,
               log: Callable[[str], None] = print) -> str:
    """Make output i of `model` mean `class_names[i]`; returns how ("fresh", "kept", "reordered", "assumed")."""
    name, layer = classifier_layer(model)
    if replace_head:
        init = getattr(model, "_init_weights", None)  # the checkpoint's own initialiser (normal, its std)
        with torch.no_grad():
            init(layer) if init else layer.reset_parameters()
        log(f"[train] {source}: a fresh classifier ({name}) for the classes {class_names}")
        return "fresh"
    if fresh:
        return "fresh"  # the checkpoint had no head: the caller refuses to score it untrained
    config = model.config
    names = [str(config.id2label[i]) for i in range(int(config.num_labels))]
    if _generic(names):
        log(f"[train] {source} names no classes ({names[0]}...): output i is taken to be the dataset's class i "
            f"({class_names}); check the order, or set replace_head to learn a fresh classifier")
        return "assumed"
    if names == list(class_names):
        return "kept"
    if sorted(names) != sorted(class_names):
        raise ModelpressError(f"{source} classifies {names}, but the dataset's classes are {class_names}; set "
                              "replace_head: true (a fresh classifier for your classes, then fine-tune) or use data "
                              "labelled with the checkpoint's classes")
    order = [names.index(c) for c in class_names]
    with torch.no_grad():
        layer.weight.copy_(layer.weight[order].clone())
        if layer.bias is not None:
            layer.bias.copy_(layer.bias[order].clone())
    log(f"[train] {source} classifies {names}: its outputs reordered to the dataset's order {class_names}")
    return "reordered"
