"""Which text classifier a run starts from: ``bert`` built from ``model_args`` or an ``hf:<folder>``
checkpoint; the checks a config gets before anything runs; a model's forward FLOPs."""

from __future__ import annotations

import torch
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.models.text import (_LAYER, BERT_ARGS, BERT_CONFIG, FROM_TEACHER, HF_PREFIX, _read_config,
                                    bert_from_config, check_folder, load_hf, text_info)


def integral(args: dict) -> dict:
    """Whole-number floats as ints: KFP passes dict parameters through protobuf Struct, where every
    number is a float."""
    return {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in args.items()}


def is_text_architecture(architecture) -> bool:
    """Whether `architecture` names a text classifier source: ``bert`` or ``hf:<folder>``."""
    return isinstance(architecture, str) and (architecture == BERT_CONFIG or architecture.startswith(HF_PREFIX))


def hf_folder(architecture: str) -> str:
    return architecture[len(HF_PREFIX):]


def check_text_arguments(architecture: str, args: dict, arch_key: str = "architecture",
                         args_key: str = "model_args", max_length: int | None = None) -> None:
    """Refuse, before anything runs, a text architecture or arguments that cannot work (with
    `max_length`: also position embeddings too few for it)."""
    if not isinstance(args, dict):
        raise ModelpressError(f"{args_key} must be a mapping of arguments, e.g. {{layers: 4, hidden: 256}}")
    args = integral(args)
    if arch_key == "student_architecture" and architecture == FROM_TEACHER:
        unknown = sorted(set(args) - {"layers"})
        if unknown or not isinstance(args.get("layers", 1), int) or args.get("layers", 1) < 1:
            raise ModelpressError(f"{args_key} for {FROM_TEACHER!r} takes only layers (a whole number >= 1; "
                                  f"default half the teacher's), got {args}")
        return
    if architecture == BERT_CONFIG:
        unknown = sorted(set(args) - set(BERT_ARGS))
        if unknown:
            raise ModelpressError(f"{args_key} {unknown} do not fit architecture 'bert', which takes {list(BERT_ARGS)}")
        sizes = {**dict(layers=4, hidden=256, heads=4, intermediate=1024), **args}
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
        if bad:
            raise ModelpressError(f"{args_key}: bert sizes must be whole numbers >= 1; got {bad}")
        if sizes["hidden"] % sizes["heads"]:
            raise ModelpressError(f"{args_key}: hidden ({sizes['hidden']}) must be a multiple of heads "
                                  f"({sizes['heads']}), since each head gets hidden/heads dimensions")
        if max_length and sizes.get("max_position", max_length) < max_length:
            raise ModelpressError(f"{args_key}: max_position {sizes['max_position']} is below max_length "
                                  f"{max_length}; raise it or leave it out (it defaults to max_length)")
        return
    if architecture.startswith(HF_PREFIX):
        if args:
            raise ModelpressError(f"{args_key} must be empty for {architecture}: the folder's config.json sets "
                                  f"the sizes (got {args})")
        if not hf_folder(architecture).startswith("gs://"):  # a bucket is checked where the step reads it
            path = check_folder(hf_folder(architecture))
            if max_length:
                from types import SimpleNamespace

                from modelpress.models.text_heads import check_length

                config = {"model_type": "", **_read_config(path / "config.json")}
                check_length(SimpleNamespace(**config), max_length, architecture)
        return
    choices = ("bert or hf:<folder>" if arch_key == "architecture"
               else f"{FROM_TEACHER} (the teacher with fewer layers, DistilBERT-style) or bert")
    raise ModelpressError(f"{arch_key} {architecture!r} is not a text classifier; a text dataset (text_column set) "
                          f"takes {choices}")


def build_text_model(architecture: str, args: dict, *, vocab_size: int, num_labels: int, max_length: int,
                     replace_head: bool = False, seed: int = 0) -> tuple[nn.Module, dict]:
    """The model a text run starts from and its info: ``bert`` built from ``args`` (seeded, untrained)
    or ``hf:<folder>`` loaded with its weights (``replace_head``: a fresh classifier of ``num_labels``)."""
    check_text_arguments(architecture, args, max_length=max_length)
    args = integral(args)
    if architecture == BERT_CONFIG:
        sizes = {"max_position": max_length, **args}
        model = bert_from_config(vocab_size, num_labels, seed=seed, **sizes)
        return model, text_info(model, BERT_CONFIG, max_length=max_length)
    with torch.random.fork_rng(devices=[]):  # a fresh head is initialised from the seed
        torch.manual_seed(seed)
        model, info = load_hf(hf_folder(architecture), num_labels, replace_head=replace_head)
    from modelpress.models.text_heads import check_length

    check_length(model.config, max_length, architecture)
    info["max_length"] = int(max_length)
    return model, info


def text_forward_flops(model: nn.Module, length: int) -> int:
    """Forward FLOPs of one example of `length` tokens: 2 per weight of every encoder Linear per token,
    the attention products (Q.K^T and probabilities.V: 2 x 2 x length^2 x hidden per layer), and the
    pooler and classifier once (they see the first token only)."""
    per_token = per_example = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            if _LAYER.search(name + "."):
                per_token += m.weight.numel()
            else:
                per_example += m.weight.numel()
    config = model.config
    return int(2 * per_token * length + 2 * per_example
               + 4 * config.num_hidden_layers * length * length * config.hidden_size)
