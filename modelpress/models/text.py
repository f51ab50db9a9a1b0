"""Text classifiers from Hugging Face transformers: a user's ``save_pretrained`` folder
(``hf:<folder>``), a BERT-style encoder built from a config, the text model artifact, and a
DistilBERT-style student initialised from its teacher.

The text model artifact is a directory::

    config.json, model.safetensors   what ``save_pretrained(safe_serialization=True)`` writes
    tokenizer/tokenizer.json (+ the tokenizer's other files)   the tokenizer the model was trained with
    spec.json                        {"format": "hf-text", "architecture": "hf:<folder>" | "bert-config",
                                      "num_labels", "class_names", "max_length", "model_type", "inputs", ...}

Nothing is downloaded (``local_files_only``), nothing is unpickled (safetensors only) and no
code from a checkpoint runs (``trust_remote_code=False``; a config with ``auto_map`` is refused).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, read_json, write_json_atomic
from modelpress.data.tokenizer import find_tokenizer_file, load_tokenizer

SPEC_FILE = "spec.json"  # the same name as the torch artifact's, so a step can tell them apart by "format"
TEXT_FORMAT = "hf-text"
TOKENIZER_DIR = "tokenizer"
BERT_CONFIG = "bert"  # architecture: a BERT-style encoder built from model_args, trained from scratch
BERT_ARGS = ("layers", "hidden", "heads", "intermediate", "max_position")
FROM_TEACHER = "from-teacher"  # student_architecture: the teacher's class with fewer layers (DistilBERT-style)
HF_PREFIX = "hf:"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # in the order the ONNX graph takes them
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def _transformers():
    """``import transformers``, where torchvision's extension does not match torch too.

    transformers imports torchvision for its image utilities; sources._import_torchvision is
    the one place that makes that import work in this environment.
    """
    from modelpress.models.sources import _import_torchvision

    _import_torchvision()
    import transformers

    # pipeline step logs are read by people: no per-tensor progress bars
    transformers.utils.logging.disable_progress_bar()
    return transformers


@contextlib.contextmanager
def _quiet():
    """transformers prints a load report for every fresh head; the info dict says it instead."""
    logging = _transformers().utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# ------------------------------------------------------------------------ checks

def check_folder(folder: str) -> Path:
    """Refuse, before anything is loaded, a folder that is not a safe ``save_pretrained`` folder."""
    path = local_path(folder)
    if not path.is_dir():
        raise ModelpressError(f"hf:{folder}: no such folder; give the folder that "
                              "model.save_pretrained(folder) wrote (config.json + model.safetensors)")
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelpressError(f"hf:{folder} has no config.json, so it is not a save_pretrained folder; "
                              "save the model with model.save_pretrained(folder, safe_serialization=True)")
    config = _read_config(config_file)
    for name, data in (("config.json", config), ("tokenizer_config.json", _tokenizer_config(path))):
        if data.get("auto_map"):
            raise ModelpressError(
                f"hf:{folder}: {name} has auto_map {sorted(data['auto_map'])}, i.e. the model needs custom "
                "code from the checkpoint (trust_remote_code), which modelpress never runs. Use a model class "
                "that ships with transformers, or save your model's weights into one (e.g. BertConfig + "
                "BertForSequenceClassification) with save_pretrained")
    weights = next((path / w for w in SAFE_WEIGHTS if (path / w).exists()), None)
    if weights is not None and weights.suffix == ".safetensors":
        _check_safetensors(weights, folder)
    if weights is None:
        pickled = sorted({p.name for pattern in PICKLED for p in path.glob(pattern)})
        if pickled:
            raise ModelpressError(
                f"hf:{folder} holds only pickled weights ({', '.join(pickled)}), which modelpress never "
                "unpickles. Convert them once, where you trust the file: "
                "AutoModelForSequenceClassification.from_pretrained(folder).save_pretrained(folder, "
                "safe_serialization=True), which writes model.safetensors")
        raise ModelpressError(f"hf:{folder} has config.json but no model.safetensors; save the model with "
                              "model.save_pretrained(folder, safe_serialization=True)")
    return path


def _check_safetensors(file: Path, folder: str) -> None:
    """Read the weights file's header: a truncated file or a Git LFS pointer fails here, not in a step."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise ModelpressError(f"hf:{folder}: {file.name} is not a readable safetensors file ({exc}); a Git LFS "
                              "pointer or a truncated copy? Fetch the real file (git lfs pull) or save the model "
                              "again with save_pretrained") from None


def _read_config(config_file: Path) -> dict:
    try:
        data = read_json(config_file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelpressError(f"{config_file} is not valid JSON ({exc}); write it with save_pretrained") from None
    if not isinstance(data, dict):
        raise ModelpressError(f"{config_file} is not a JSON object; write it with save_pretrained")
    return data


def _tokenizer_config(path: Path) -> dict:
    for candidate in (path / "tokenizer_config.json", path / TOKENIZER_DIR / "tokenizer_config.json"):
        if candidate.exists():
            return _read_config(candidate)
    return {}


# ------------------------------------------------------------------------ sources

def load_hf(folder: str, num_labels: int | None = None, *, replace_head: bool = False) -> tuple[nn.Module, dict]:
    """``AutoModelForSequenceClassification`` from a local ``save_pretrained`` folder (or gs://).

    ``num_labels`` other than the checkpoint's is refused unless ``replace_head``: then the
    classifier is a fresh, untrained head of the new size. Returns the model (eval mode) and
    its info (the artifact metadata; ``fresh_head`` names newly initialised tensors).
    """
    from safetensors import SafetensorError

    tf = _transformers()
    path = check_folder(folder)
    try:
        config = tf.AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelpressError(f"hf:{folder}: transformers {tf.__version__} cannot read config.json "
                              f"({type(exc).__name__}: {exc}); its model_type must be one transformers "
                              "ships") from None
    if num_labels is not None and int(num_labels) != config.num_labels:
        if not replace_head:
            raise ModelpressError(
                f"hf:{folder} classifies {config.num_labels} labels but the dataset has {num_labels}; "
                "set replace_head (a fresh classifier head, trained from scratch) or use a dataset "
                "with the checkpoint's labels")
        config.num_labels = int(num_labels)  # also resets id2label/label2id to the new size
    try:
        with _quiet():
            model, loading = tf.AutoModelForSequenceClassification.from_pretrained(
                str(path), config=config, local_files_only=True, use_safetensors=True, trust_remote_code=False,
                ignore_mismatched_sizes=replace_head, output_loading_info=True)
    except (ValueError, OSError, RuntimeError, KeyError, SafetensorError) as exc:
        raise ModelpressError(f"hf:{folder}: transformers cannot load it as a sequence classifier "
                              f"({type(exc).__name__}: {str(exc)[:400]}); save it with "
                              "save_pretrained(folder, safe_serialization=True)") from None
    fresh = sorted(set(loading.get("missing_keys", ())) | {k[0] for k in loading.get("mismatched_keys", ())})
    info = text_info(model, f"{HF_PREFIX}{folder}")
    info["fresh_head"] = fresh
    return model.eval(), info


def bert_from_config(vocab_size: int, num_labels: int, *, layers: int = 4, hidden: int = 256, heads: int = 4,
                     intermediate: int = 1024, max_position: int = 512, seed: int = 0) -> nn.Module:
    """A BERT-style encoder + classifier built from a config (no download), seeded."""
    tf = _transformers()
    sizes = {"vocab_size": vocab_size, "num_labels": num_labels, "layers": layers, "hidden": hidden,
             "heads": heads, "intermediate": intermediate, "max_position": max_position}
    bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise ModelpressError(f"bert-config sizes must be positive integers; got {bad}")
    if hidden % heads:
        raise ModelpressError(f"bert-config: hidden ({hidden}) must be a multiple of heads ({heads}), since "
                              f"each head gets hidden/heads dimensions; e.g. hidden {heads * max(1, hidden // heads)}")
    config = tf.BertConfig(vocab_size=vocab_size, num_labels=num_labels, num_hidden_layers=layers,
                           hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate,
                           max_position_embeddings=max_position)
    with torch.random.fork_rng(devices=[]):  # seeded without moving the caller's random stream
        torch.manual_seed(seed)
        model = tf.BertForSequenceClassification(config)
    return model.eval()


def model_inputs(model: nn.Module) -> list[str]:
    """Which of input_ids / attention_mask / token_type_ids the model's forward takes (DistilBERT: no
    token_type_ids)."""
    params = inspect.signature(model.forward).parameters
    return [name for name in TEXT_INPUTS if name in params]


def text_info(model: nn.Module, source: str, class_names: list[str] | None = None,
              max_length: int | None = None) -> dict:
    """The artifact metadata of a sequence classifier, filled from its config where not given."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", 512)
    labels = [config.id2label[i] for i in range(config.num_labels)] if config.id2label else None
    return {"format": TEXT_FORMAT, "architecture": source, "model_type": config.model_type,
            "num_labels": int(config.num_labels), "class_names": list(class_names or labels or []),
            "max_length": int(max_length or min(positions, 512)), "inputs": model_inputs(model),
            "layers": int(config.num_hidden_layers), "hidden": int(config.hidden_size),
            "heads": int(config.num_attention_heads), "vocab_size": int(config.vocab_size)}


# ------------------------------------------------------------------------ the artifact

def save_text_model(model: nn.Module, tokenizer_dir: str, out_dir: str, info: dict) -> dict:
    """Write the text model artifact atomically; returns the spec written to ``spec.json``."""
    tok = load_tokenizer(tokenizer_dir).tokenizer
    vocab = int(model.config.vocab_size)
    if tok.get_vocab_size() > vocab:
        raise ModelpressError(f"the tokenizer at {tokenizer_dir} has {tok.get_vocab_size()} tokens but the "
                              f"model's embedding has {vocab}; ids past {vocab - 1} would fail. Build the "
                              "model with vocab_size = the tokenizer's vocabulary size")
    spec = {**text_info(model, info.get("architecture", BERT_CONFIG)), **copy.deepcopy(info)}
    spec["format"] = TEXT_FORMAT
    spec["tokenizer"] = TOKENIZER_DIR
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and int(spec["max_length"]) > positions:
        raise ModelpressError(f"max_length {spec['max_length']} exceeds the model's {positions} position "
                              f"embeddings; use max_length <= {positions}")
    names = spec.get("class_names") or []
    if names and len(names) != int(model.config.num_labels):
        raise ModelpressError(f"{len(names)} class names for a model with {model.config.num_labels} labels")
    if names:  # the saved config.json then names the classes too, for anyone loading the folder directly
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}
    source = find_tokenizer_file(tokenizer_dir)[0].parent
    with atomic_dir(local_path(out_dir)) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / TOKENIZER_DIR).mkdir()
        for f in source.iterdir():  # the tokenizer's own files only (not a model folder's weights)
            if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges"))
                                or f.name == "added_tokens.json"):
                shutil.copy2(f, tmp / TOKENIZER_DIR / f.name)
        write_json_atomic(tmp / SPEC_FILE, spec)
    return spec


def read_text_spec(path: str) -> dict:
    spec_file = local_path(path) / SPEC_FILE
    if not spec_file.exists():
        raise ModelpressError(f"{path} is not a text model artifact: {SPEC_FILE} is missing")
    spec = _read_config(spec_file)
    if spec.get("format") != TEXT_FORMAT:
        raise ModelpressError(f"{path} is not a text model artifact ({SPEC_FILE} has format "
                              f"{spec.get('format')!r}, not {TEXT_FORMAT!r}); load it with models.load_model")
    return spec


def load_text_model(path: str) -> tuple[nn.Module, dict]:
    """The model (eval mode) and spec of a text model artifact; the same safety checks as ``hf:``."""
    spec = read_text_spec(path)
    load_tokenizer(local_path(path) / spec.get("tokenizer", TOKENIZER_DIR))  # a clear error before the weights load
    if spec.get("layer_shapes"):  # structurally pruned: its config.json no longer says the layer sizes
        from modelpress.models.text_shapes import load_pruned

        return load_pruned(str(local_path(path)), spec), spec
    model, _ = load_hf(str(local_path(path)), spec.get("num_labels"))
    return model, spec


# ------------------------------------------------------------------------ distillation

_LAYER = re.compile(r"(^|\.)layer\.(\d+)\.")


def student_layers(teacher_layers: int, layers: int) -> list[int]:
    """The teacher layer each student layer starts from: every other one for half the depth."""
    return [i * teacher_layers // layers for i in range(layers)]


def student_from_teacher(teacher: nn.Module, layers: int | None = None) -> nn.Module:
    """A DistilBERT-style student: the teacher's class with ``layers`` (default half) encoder layers,
    student layer i initialised from teacher layer ``2i``; embeddings, pooler and classifier copied."""
    n = int(teacher.config.num_hidden_layers)
    layers = max(1, n // 2) if layers is None else int(layers)
    if not 1 <= layers <= n:
        raise ModelpressError(f"a student has 1 to {n} layers (the teacher's depth); got {layers}")
    picked = student_layers(n, layers)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = layers
    student = type(teacher)(config)
    teacher_state = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        match = _LAYER.search(key)
        if match:
            i = int(match.group(2))
            old = key[:match.start()] + match.group(1) + f"layer.{picked[i]}." + key[match.end():]
        else:
            old = key
        if old not in teacher_state:
            raise ModelpressError(f"cannot initialise the student's {key} from the teacher (no {old}); "
                                  f"{type(teacher).__name__} is not a layered encoder this knows")
        state[key] = teacher_state[old].detach().clone()
    student.load_state_dict(state)
    return student.eval()
