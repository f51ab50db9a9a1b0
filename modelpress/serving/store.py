"""The models a server holds: a Triton-layout repository, loaded by version policy, polled.

Requests are matched against the loaded names and version numbers, never joined into
paths. A swap replaces the version map in one assignment, so a request either sees the
old map or the new one; a retired version drains what it already accepted before its
sessions close. A version that fails to load is reported and skipped, and whatever was
serving keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelpress.deploy import repository as repo
from modelpress.core.errors import ModelpressError
from modelpress.export.runtime import META_FILE, ONNX_FILE, session as ort_session
from modelpress.serving.batching import BatchPolicy, Scheduler, check_rows
from modelpress.serving.postprocess import ModelInfo, check_info, input_parameters, metadata_parameters
from modelpress.serving.errors import ClientError
from modelpress.serving.protocol import datatype_of, triton_to_v2
from modelpress.serving.textmodel import TextModel, tokenizer_stamp

log = logging.getLogger("modelpress.serve")
_VERSION = re.compile(r"^[0-9]{1,18}$")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str          # v2 name, e.g. FP32
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0


class ModelVersion:
    """One loaded version: its config, meta.json, `instance_group.count` sessions and a scheduler."""

    def __init__(self, name: str, version: int, config, sessions: list, threads: int, *,
                 max_queue_rows: int, observe=None, info: ModelInfo | None = None, text: TextModel | None = None):
        self.name, self.version, self.config = name, version, config
        self.info = info or ModelInfo()
        self.text = text  # a text classifier: takes strings too, batches token ids of any length
        self.policy = BatchPolicy.from_config(config)
        self.inputs = [TensorSpec(t.name, triton_to_v2(_type_name(t.data_type)), tuple(t.dims)) for t in config.input]
        self.outputs = [TensorSpec(t.name, triton_to_v2(_type_name(t.data_type)), tuple(t.dims))
                        for t in config.output]
        self._check_graph(sessions[0])
        check_info(self)
        self.instances, self.threads = len(sessions), threads
        hooks = {"key": text.key, "merge": text.merge} if text else {}
        self.scheduler = Scheduler(sessions, self.policy, max_queue_rows=max_queue_rows,
                                   observe=(lambda kind, value: observe(self, kind, value)) if observe else None,
                                   label=f"{name}/{version}", **hooks)

    def _check_graph(self, sess):
        have = {i.name for i in sess.get_inputs()}
        want = {t.name for t in self.inputs}
        if have != want:
            raise ModelpressError(f"config.pbtxt declares inputs {sorted(want)} but model.onnx has {sorted(have)}")
        outs = {o.name for o in sess.get_outputs()}
        missing = {t.name for t in self.outputs} - outs
        if missing:
            raise ModelpressError(f"config.pbtxt declares outputs {sorted(missing)} that model.onnx lacks")

    def metadata(self, versions: list[int]) -> dict:
        batch = [-1] if self.policy.max_batch_size > 0 else []
        inputs = []
        for t in self.inputs:
            entry = {"name": t.name, "datatype": t.datatype, "shape": batch + list(t.dims)}
            described = input_parameters(self, t.name)  # layout, value range, preprocessing
            if described:
                entry["parameters"] = described
            inputs.append(entry)
        doc = {"name": self.name, "versions": [str(v) for v in versions], "platform": "onnxruntime_onnx",
               "inputs": inputs,
               "outputs": [{"name": t.name, "datatype": t.datatype, "shape": batch + list(t.dims)}
                           for t in self.outputs]}
        params = metadata_parameters(self)
        if params:
            doc["parameters"] = params
        return self.text.metadata(self, doc) if self.text else doc

    @property
    def ready(self) -> bool:
        return self.scheduler.failure is None

    def check(self, inputs: dict[str, np.ndarray], outputs: list[str] | None) -> int:
        """Validate a request against the config; return its row count."""
        given, wanted = set(inputs), {t.name for t in self.inputs}
        if given != wanted:
            missing, extra = sorted(wanted - given), sorted(given - wanted)
            raise ClientError(f"model {self.name} expects inputs {sorted(wanted)}"
                              + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
        rows = None
        batched = self.policy.max_batch_size > 0
        for spec in self.inputs:
            array = inputs[spec.name]
            datatype = datatype_of(array)
            if datatype != spec.datatype:
                raise ClientError(f"input {spec.name!r} has datatype {datatype}; model {self.name} expects {spec.datatype}")
            shape = array.shape[1:] if batched else array.shape
            expected = ([-1] if batched else []) + list(spec.dims)
            if (batched and array.ndim == 0) or len(shape) != len(spec.dims) or any(
                    d != -1 and d != s for d, s in zip(spec.dims, shape)):
                raise ClientError(f"input {spec.name!r} has shape {list(array.shape)}; model {self.name} expects "
                                  f"{expected} (-1: any size)")
            n = array.shape[0] if batched else 1
            if rows is not None and n != rows:
                raise ClientError(f"inputs disagree on the batch size ({rows} vs {n} rows)")
            rows = n
        known = {t.name for t in self.outputs}
        for o in outputs or []:
            if o not in known:
                raise ClientError(f"model {self.name} has no output {o!r}; outputs: {sorted(known)}")
        check_rows(rows, self.policy, self.name)
        return rows


def open_sessions(config, folder: Path, threads: int | None) -> tuple[list, int]:
    """`instance_group.count` ONNX Runtime sessions (slow: run it off the event loop)."""
    # the cores this process may use (containers, taskset); --threads overrides the config's
    count, configured = repo.serving_layout(config, len(os.sched_getaffinity(0)))
    threads = threads or configured
    return [ort_session(folder / ONNX_FILE, threads=threads) for _ in range(count)], threads


def _type_name(value: int) -> str:
    from tritonclient.grpc import model_config_pb2 as mc
    return mc.DataType.Name(value)


def select_versions(config, available: list[int]) -> list[int]:
    """Triton's version_policy: latest {num_versions} (default 1), all {}, specific {versions}."""
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return list(available)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    n = policy.latest.num_versions if which == "latest" and policy.latest.num_versions else 1
    return list(available[-n:])


@dataclass
class _Model:
    config_text: str
    config: object
    versions: dict[int, ModelVersion] = field(default_factory=dict)


class ModelStore:
    def __init__(self, root: str | os.PathLike, *, max_queue_rows: int = 1024, threads: int | None = None,
                 observe=None):
        self.root = Path(root)
        self.max_queue_rows = max_queue_rows
        self.threads = threads
        self.observe = observe
        self.models: dict[str, _Model] = {}
        self.errors: dict[str, str] = {}       # "name" or "name/version" -> why it is not served
        # (name, version) -> the _signature that failed: retried when model.onnx, meta.json, tokenizer/ or the
        # config changes
        self._broken: dict[tuple[str, int], tuple] = {}
        self.retired: dict[tuple[str, int], ModelVersion] = {}  # kept so metrics stay monotonic
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task] = set()  # retired versions finishing their queues (strong refs)
        self.loaded_once = False

    # -- lookups (the only way a request reaches a model) ------------------------------
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        model = self.models.get(name)
        if model is None or not model.versions:
            known = sorted(n for n, m in self.models.items() if m.versions)
            why = self.errors.get(name)
            raise ClientError(f"unknown model {name!r}" + (f" ({why})" if why else "") + f"; available: {known}",
                              status=404)
        if version in (None, ""):
            return model.versions[max(model.versions)]
        if not _VERSION.match(version) or int(version) not in model.versions:
            raise ClientError(f"model {name!r} has no version {version!r} loaded; available: "
                              f"{[str(v) for v in sorted(model.versions)]}", status=404)
        return model.versions[int(version)]

    def versions(self, name: str) -> list[int]:
        return sorted(self.models[name].versions)

    def version_folder(self, name: str, version: str | None = None) -> Path:
        """The folder of a served model's version (None or "": the latest loaded), loaded or not: a
        card or meta.json is read from disk. The version is matched against the numbers the
        repository lists, never joined into a path as sent."""
        mv = self.get(name, None)  # an unknown model is a 404 here
        if version in (None, ""):
            number = mv.version
        elif _VERSION.match(version) and int(version) in repo.versions(self.root, mv.name):
            number = int(version)
        else:
            raise ClientError(f"model {name!r} has no version {version!r}; deployed: "
                              f"{[str(v) for v in repo.versions(self.root, mv.name)]}", status=404)
        return self.root / mv.name / str(number)

    def all_versions(self) -> list[ModelVersion]:
        return [v for m in list(self.models.values()) for v in list(m.versions.values())]


    def metric_versions(self) -> list[ModelVersion]:
        """Loaded versions plus retired ones: Prometheus counters must not vanish or restart."""
        loaded = self.all_versions()
        keys = {(mv.name, mv.version) for mv in loaded}
        # list(): the Prometheus thread reads while the event loop may retire a version
        return loaded + [mv for key, mv in list(self.retired.items()) if key not in keys]

    @property
    def ready(self) -> bool:
        return (self.loaded_once and bool(self.models) and all(m.versions for m in self.models.values())
                and all(mv.ready for mv in self.all_versions()))

    # -- loading ---------------------------------------------------------------------
    async def refresh(self) -> None:
        """Bring the loaded set in line with the repository on disk (called at start and by polling)."""
        async with self._lock:
            on_disk = {}
            if self.root.is_dir():
                for d in sorted(self.root.iterdir()):
                    if d.is_dir() and (d / repo.CONFIG_FILE).exists():
                        try:
                            on_disk[repo.check_name(d.name)] = d
                        except ModelpressError:
                            log.warning("skipping %s: not a valid model name", d)
            for name in [n for n in self.models if n not in on_disk]:  # model folder removed
                self._retire(self.models.pop(name).versions.values())
                log.info("model %s removed from the repository: unloaded", name)
            for name, folder in on_disk.items():
                await self._refresh_model(name, folder)
            self.loaded_once = True

    async def _refresh_model(self, name: str, folder: Path) -> None:
        try:
            text = (folder / repo.CONFIG_FILE).read_text()
            config = repo.read_config(self.root, name)
        except (OSError, ModelpressError) as exc:
            self._error(name, f"config not loaded: {exc}")
            return
        current = self.models.get(name)
        reload_all = current is None or current.config_text != text
        on_disk = repo.versions(self.root, name)
        available = [v for v in on_disk if self._broken.get((name, v)) != _signature(folder / str(v), text)]
        loaded = {} if reload_all else dict(current.versions)
        while True:
            wanted = select_versions(config, available)
            new = [v for v in wanted if v not in loaded]
            if not new:
                break
            for v in new:
                try:
                    info = ModelInfo.read(folder / str(v))
                    loop = asyncio.get_running_loop()
                    sessions, threads = await loop.run_in_executor(
                        None, open_sessions, config, folder / str(v), self.threads)
                    tm = await loop.run_in_executor(None, TextModel.load, folder / str(v), config, info)
                    loaded[v] = ModelVersion(name, v, config, sessions, threads, info=info, text=tm,
                                             max_queue_rows=self.max_queue_rows, observe=self.observe)
                    self.errors.pop(f"{name}/{v}", None)
                    p = loaded[v].policy
                    log.info("loaded %s version %d: max_batch_size %d, %s, %d instance(s) x %d thread(s)%s", name,
                             v, p.max_batch_size, f"dynamic batching (max queue delay {p.max_queue_delay_us} us)"
                             if p.dynamic else "no batching", loaded[v].instances, loaded[v].threads,
                             f"; text model, max_length {tm.max_length}" if tm else "")
                except Exception as exc:  # report and keep serving what works
                    self._broken[(name, v)] = _signature(folder / str(v), text)
                    self._error(f"{name}/{v}", f"version {v} failed to load: {exc}")
                    available.remove(v)
        keep = {v: loaded[v] for v in wanted}
        for key in [k for k in self.errors if k.startswith(f"{name}/")]:
            v = key.split("/", 1)[1]
            if not v.isdigit() or int(v) in keep or int(v) not in on_disk:  # loaded since, or gone
                del self.errors[key]
        if not keep and current and current.versions:
            # nothing new loads: keep the old versions (and old config) serving
            self._retire(m for v, m in loaded.items() if current.versions.get(v) is not m)
            return
        old = current.versions if current else {}
        self.models[name] = _Model(text, config, keep)
        self._retire(m for v, m in old.items() if keep.get(v) is not m)
        self._retire(m for v, m in loaded.items() if v not in keep and old.get(v) is not m)
        if keep:
            self.errors.pop(name, None)

    def _retire(self, versions) -> None:
        for mv in list(versions):
            log.info("retiring %s version %d once its queue drains", mv.name, mv.version)
            self.retired[(mv.name, mv.version)] = mv
            task = asyncio.get_running_loop().create_task(mv.scheduler.drain_and_close())
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)

    def _error(self, key: str, message: str) -> None:
        if self.errors.get(key) != message:
            log.error("%s: %s", key, message)
        self.errors[key] = message

    async def close(self, timeout_s: float | None = None) -> None:
        """Finish what was accepted (at most `timeout_s`), then release every version."""
        await asyncio.gather(*[mv.scheduler.drain_and_close(timeout_s=timeout_s) for mv in self.all_versions()])


def _signature(folder: Path, config_text: str) -> tuple:
    """What must change before a version that failed to load is tried again."""
    def mtime(p: Path) -> float | None:
        return p.stat().st_mtime if p.exists() else None
    return mtime(folder / ONNX_FILE), mtime(folder / META_FILE), tokenizer_stamp(folder), config_text
