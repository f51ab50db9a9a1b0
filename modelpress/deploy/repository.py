"""A Triton-layout model repository: ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/<v>/model.onnx``.

NVIDIA Triton serves it unchanged, and so does ``modelpress serve``. The config is built
as Triton's own ModelConfig protobuf (shipped in tritonclient) and written in the protobuf
text format, so field names and types are Triton's. A deploy writes a new numbered version
next to the old ones, atomically: the version folder appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from modelpress.deploy import card
from modelpress.export import runtime
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, replace_dir, write_json_atomic

CONFIG_FILE = "config.pbtxt"
THREAD_PARAM = "intra_op_thread_count"  # Triton's onnxruntime backend parameter; modelpress serve honours it
TUNED_PARAM = "tuned_by"  # set by tune-serving: the next deploy keeps the measured serving settings
TOKENIZER_DIR = "tokenizer"  # beside a text model's model.onnx; Triton ignores it, clients and modelpress read it
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32",
                   3: "TYPE_INT8", 2: "TYPE_UINT8", 9: "TYPE_BOOL"}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ModelpressError(f"invalid model name {name!r}: use letters, digits, '_', '-' or '.', "
                              "starting with a letter or digit (it becomes a folder name)")
    return name


def versions(repository: str | os.PathLike, name: str) -> list[int]:
    folder = local_path(repository) / check_name(name)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / runtime.ONNX_FILE).exists())


def latest(repository: str | os.PathLike, name: str) -> Path | None:
    """The newest complete version folder of `name`, or None when nothing is deployed."""
    vs = versions(repository, name)
    return local_path(repository) / name / str(vs[-1]) if vs else None


def previous_card(repository: str | os.PathLike, name: str) -> dict | None:
    """The card of the newest deployed version, whose owner-filled fields the next card keeps."""
    folder = latest(repository, name)
    try:
        return card.read(folder, "json") if folder else None
    except (ModelpressError, ValueError):  # none, or one edited into invalid JSON: start afresh
        return None


def build_config(onnx_path: str | os.PathLike, name: str, *, max_batch_size: int = 64,
                 preferred_batch_sizes: tuple[int, ...] = (8, 32), max_queue_delay_us: int = 0,
                 instances: int = 1, gpu: bool = False):
    """Triton ModelConfig from the ONNX graph's inputs and outputs (batch dimension implicit)."""
    from tritonclient.grpc import model_config_pb2 as mc

    if max_batch_size < 1:
        raise ModelpressError(f"max_batch_size must be >= 1, got {max_batch_size}")
    proto = runtime.load_onnx(onnx_path)
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", backend="onnxruntime",
                            max_batch_size=max_batch_size)
    initializers = {i.name for i in proto.graph.initializer}
    for value, target in [(v, config.input) for v in proto.graph.input if v.name not in initializers] + \
                         [(v, config.output) for v in proto.graph.output]:
        t = value.type.tensor_type
        dims = [d.dim_value if d.dim_value else -1 for d in t.shape.dim][1:]  # drop the batch dim
        dtype = _ONNX_TO_TRITON.get(t.elem_type)
        if dtype is None:
            raise ModelpressError(f"{value.name}: ONNX element type {t.elem_type} has no Triton equivalent")
        target.add(name=value.name, data_type=getattr(mc, dtype), dims=dims)
    config.dynamic_batching.preferred_batch_size.extend(
        [b for b in preferred_batch_sizes if b <= max_batch_size])
    # 0 (Triton's default): take whatever is queued when an instance frees up. Batches still
    # grow with load; a positive delay idles a free instance, which on CPU rarely pays
    # (benchmarks/results/serving.md).
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=instances, kind=kind)
    config.version_policy.latest.num_versions = 1
    for key, value in describe_for_clients(runtime.read_meta(onnx_path)).items():
        config.parameters[key].string_value = value
    return config


def serving_layout(config, cores: int) -> tuple[int, int]:
    """(instances, ONNX Runtime intra-op threads per instance) a config serves with on `cores`:
    the instance groups' counts, and THREAD_PARAM when set, else the cores shared out."""
    instances = sum(g.count or 1 for g in config.instance_group) or 1
    p = config.parameters.get(THREAD_PARAM)
    configured = int(p.string_value) if p is not None and p.string_value.isdigit() else 0
    return instances, configured if configured > 0 else max(1, cores // instances)


def describe_for_clients(meta: dict) -> dict[str, str]:
    """What to send and what comes back, as config.pbtxt parameters (Triton ignores unknown ones).

    Strings, since Triton's parameters are string-valued; lists and dicts as JSON.
    """
    info = meta.get("input") or {}
    out = {f"input_{k}": v if isinstance(v, str) else json.dumps(v)
           for k, v in info.items() if k not in ("name", "datatype", "shape")}
    if meta.get("class_names"):
        out["class_names"] = json.dumps(list(meta["class_names"]))
    out["task"] = meta.get("task") or "classification"
    return out


def read_config(repository: str | os.PathLike, name: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    path = local_path(repository) / check_name(name) / CONFIG_FILE
    try:
        return text_format.Parse(path.read_text(), mc.ModelConfig())
    except FileNotFoundError:
        raise ModelpressError(f"no {CONFIG_FILE} for model {name!r} in {repository}") from None
    except text_format.ParseError as exc:
        raise ModelpressError(f"{path} is not a valid Triton model config: {exc}") from None


def deploy(model_dir: str | os.PathLike, repository: str | os.PathLike, name: str, *,
           max_batch_size: int = 64, preferred_batch_sizes: tuple[int, ...] = (8, 32),
           max_queue_delay_us: int = 0, instances: int = 1, gpu: bool = False,
           extra_meta: dict | None = None) -> int:
    """Add `model_dir` (model.onnx + meta.json [+ decision.json]) as the next version of `name`, with its
    model card (model_card.json, model_card.md); return the version."""
    from google.protobuf import text_format

    check_name(name)
    source = runtime.onnx_file(model_dir)
    config = build_config(source, name, max_batch_size=max_batch_size,
                          preferred_batch_sizes=preferred_batch_sizes,
                          max_queue_delay_us=max_queue_delay_us, instances=instances, gpu=gpu)
    folder = local_path(repository) / name
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / CONFIG_FILE).is_file():
        keep_tuned(config, read_config(repository, name))
    version = (versions(repository, name) or [0])[-1] + 1
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=folder))
    try:
        shutil.copy2(source, tmp / runtime.ONNX_FILE)
        tokenizer = source.parent / TOKENIZER_DIR
        if tokenizer.is_dir():  # a text model: the server tokenises with the model's own tokenizer
            shutil.copytree(tokenizer, tmp / TOKENIZER_DIR)
        meta = {**runtime.read_meta(model_dir), **(extra_meta or {}), "version": version}
        write_json_atomic(tmp / runtime.META_FILE, meta)
        # inside the temp folder: a version never appears without its card
        card.write(tmp, card.build(model_dir, name=name, version=version, meta=meta,
                                   previous=previous_card(repository, name)))
        config_tmp = folder / f".{CONFIG_FILE}.tmp"
        config_tmp.write_text(text_format.MessageToString(config))
        replace_dir(tmp, folder / str(version))  # fails if that version appeared meanwhile
        os.replace(config_tmp, folder / CONFIG_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version


def keep_tuned(config, previous) -> None:
    """Carry the serving settings `modelpress tune-serving` measured (instances, threads, batching
    delay and preferred sizes) from the model's previous config into `config`: a retrained version
    of the same model serves best with them too, and a deploy must not undo a tuning."""
    if TUNED_PARAM not in previous.parameters:
        return
    for group, old in zip(config.instance_group, previous.instance_group):
        group.count = old.count
    if config.HasField("dynamic_batching") and previous.HasField("dynamic_batching"):
        db = config.dynamic_batching
        db.max_queue_delay_microseconds = previous.dynamic_batching.max_queue_delay_microseconds
        del db.preferred_batch_size[:]
        db.preferred_batch_size.extend(b for b in previous.dynamic_batching.preferred_batch_size
                                       if b <= config.max_batch_size)
    for key in (THREAD_PARAM, TUNED_PARAM):
        if key in previous.parameters:
            config.parameters[key].string_value = previous.parameters[key].string_value
