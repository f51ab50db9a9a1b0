"""The data plane: what the server answers, whatever carries the request (REST today, gRPC next).

It takes decoded requests (`protocol.InferRequest`, model names and version strings) and
returns results as Python objects: arrays, dicts shaped like KServe v2 / Triton's documents,
the model's protobuf config. Failures raise `errors.ClientError` / `ServerError` with the
status to answer; `errors.answer` maps anything else. No transport type appears here, so each
transport only decodes, calls one method and encodes.

A text version (`ModelVersion.text`) takes strings: they are tokenised with that version's
tokenizer in a thread pool (the Rust tokenizer releases the GIL, so the event loop keeps
serving), again with the new version's tokenizer should a swap happen while the request waits,
and the result carries the truncation report as response parameters (see `textmodel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from modelpress import __version__
from modelpress.serving import postprocess
from modelpress.serving.errors import ClientError, SchedulerClosed, ServerError
from modelpress.serving.protocol import InferRequest
from modelpress.serving.settings import ServeSettings
from modelpress.serving.store import ModelStore, ModelVersion

log = logging.getLogger("modelpress.serve")
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics", "model_repository",
              "schedule_policy"]


@dataclass
class InferResult:
    """The outputs of one request and the version that produced them (it may have been swapped
    in while the request waited)."""
    model: ModelVersion
    id: str | None
    outputs: dict[str, np.ndarray]
    parameters: dict | None = None   # response parameters: a text model's truncation report


def model_stats(mv: ModelVersion) -> dict:
    """One version's statistics, in Triton's ModelStatistics layout."""
    s = mv.scheduler.stats
    pair = lambda count, ns: {"count": count, "ns": ns}  # noqa: E731
    return {"name": mv.name, "version": str(mv.version), "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count, "execution_count": s.execution_count,
            "inference_stats": {"success": pair(s.success_count, s.success_ns), "fail": pair(s.fail_count, s.fail_ns),
                                "queue": pair(s.queue_count, s.queue_ns),
                                "compute_input": pair(s.compute_count, 0),
                                "compute_infer": pair(s.compute_count, s.compute_ns),
                                "compute_output": pair(s.compute_count, 0),
                                "cache_hit": pair(0, 0), "cache_miss": pair(0, 0)},
            "batch_stats": [{"batch_size": b, "compute_infer": pair(c, ns)} for b, (c, ns) in sorted(s.batches.items())]}


class DataPlane:
    def __init__(self, store: ModelStore, settings: ServeSettings, metrics=None):
        self.store, self.settings, self.metrics = store, settings, metrics
        # texts are tokenised here, never on the event loop; threads start on first use
        self.tokenise_pool = ThreadPoolExecutor(max_workers=max(2, len(os.sched_getaffinity(0))),
                                                thread_name_prefix="tokenise")

    # -- health and metadata --------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.store.ready

    def not_ready_reason(self) -> str | None:
        """None when every model is loaded and ready; otherwise what is not, and why."""
        if self.store.ready:
            return None
        why = [f"{mv.name}/{mv.version}: {mv.scheduler.failure}" for mv in self.store.all_versions() if not mv.ready]
        why += [f"{key}: {reason}" for key, reason in sorted(self.store.errors.items())]
        return "; ".join(why) or "no model is loaded yet"

    def server_metadata(self) -> dict:
        return {"name": "modelpress", "version": __version__, "extensions": EXTENSIONS}

    def model_names(self) -> list[str]:
        return sorted(self.store.models)

    def model(self, name: str, version: str | None = None) -> ModelVersion:
        """The loaded version a request names (None or "": the latest); unknown ones are a 404."""
        return self.store.get(name, version)

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        mv = self.model(name, version)
        return mv.metadata(self.store.versions(mv.name))

    def model_not_ready_reason(self, name: str, version: str | None = None) -> str | None:
        mv = self.model(name, version)
        return None if mv.ready else f"model {mv.name} version {mv.version} is not ready: {mv.scheduler.failure}"

    def model_config(self, name: str, version: str | None = None):
        """The version's config.pbtxt as its protobuf message (tritonclient's ModelConfig)."""
        return self.model(name, version).config

    def model_card(self, name: str, version: str | None = None, fmt: str = "markdown") -> str | dict:
        """The version's model card (None or "": the latest loaded): Markdown text, or (fmt "json") the
        dict; 404 for an unknown model or version, or a version deployed without a card."""
        from modelpress.core.errors import ModelpressError
        from modelpress.deploy import card

        folder = self.store.version_folder(name, version)
        try:
            return card.read(folder, fmt)
        except ModelpressError:
            raise ClientError(f"model {name} version {folder.name} has no model card: it was deployed before model "
                              "cards or by hand; deploy it again to write one", status=404) from None

    def statistics(self, name: str | None = None, version: str | None = None) -> dict:
        """Triton's statistics: of one version, every loaded version of a model, or (no name) all."""
        if version:
            mvs = [self.model(name, version)]
        elif name:
            name = self.model(name).name
            mvs = [self.store.get(name, str(v)) for v in self.store.versions(name)]
        else:
            mvs = self.store.all_versions()
        return {"model_stats": [model_stats(mv) for mv in mvs]}

    def repository_index(self) -> list[dict]:
        """Every version loaded or tried: READY, or UNAVAILABLE with the reason."""
        index = [{"name": mv.name, "version": str(mv.version), "state": "READY" if mv.ready else "UNAVAILABLE",
                  "reason": mv.scheduler.failure or ""} for mv in self.store.all_versions()]
        for key, why in sorted(self.store.errors.items()):
            name, _, version = key.partition("/")
            index.append({"name": name, "version": version, "state": "UNAVAILABLE", "reason": why})
        return index

    # -- inference ------------------------------------------------------------------------
    async def infer(self, mv: ModelVersion, req: InferRequest, version: str | None = None) -> InferResult:
        """Run a decoded v2 request on `mv` (from `model()`, looked up before the body is read so an
        unknown model is a 404 first); `version` is what the client named, for a mid-request swap."""
        plan = postprocess.plan(mv, req.outputs, req.classification, req.parameters)  # 4xx before compute

        def post(final: ModelVersion, result):  # the version may have been swapped meanwhile: plan for it
            p = plan if final is mv else postprocess.plan(final, req.outputs, req.classification, req.parameters)
            return postprocess.apply(final, p, result)

        said: dict = {}
        outputs, mv = await self.execute(mv, req.inputs, plan.model_outputs, version, post,
                                         self._text_feed(req.inputs, None, said))
        return InferResult(mv, req.id, outputs, said or None)

    async def infer_texts(self, mv: ModelVersion, texts: list[str], version: str | None = None
                          ) -> tuple[dict[str, np.ndarray], ModelVersion, dict]:
        """Checked texts (Vertex instances) on a text version: (model outputs, the version that
        produced them, the truncation parameters)."""
        said: dict = {}
        outputs, mv = await self.execute(mv, None, None, version, prepare=self._text_feed(None, texts, said))
        return outputs, mv, said

    def _text_feed(self, inputs: dict[str, np.ndarray] | None, texts: list[str] | None, said: dict):
        """`execute`'s prepare step: a text version's token inputs from the request (tokenised by the
        version that will run them), its truncation report into `said`; other versions' inputs as sent."""
        async def prepare(mv: ModelVersion) -> dict[str, np.ndarray]:
            if mv.text is None:
                if texts is not None:
                    raise ClientError(f"model {mv.name} version {mv.version} is not a text model; send its inputs "
                                      "as a v2 request")
                return inputs
            if texts is None:
                feed, truncated = await mv.text.feed(mv, inputs, self.tokenise_pool)
            else:
                feed, truncated = await mv.text.encode(mv, texts, self.tokenise_pool)
            said.clear()
            said.update(mv.text.parameters(truncated))
            return feed
        return prepare

    async def execute(self, mv: ModelVersion, inputs: dict[str, np.ndarray] | None, outputs: list[str] | None,
                      version: str | None = None, post=None, prepare=None
                      ) -> tuple[dict[str, np.ndarray], ModelVersion]:
        """Validate, queue, execute, then `post(mv, result)`; count the outcome in the version's
        stats. Returns the outputs and the version that produced them. `prepare(mv)`, when given,
        makes the inputs for the version that will run them (a text version tokenises)."""
        start = time.perf_counter_ns()
        for _ in range(3):
            try:
                feed = inputs if prepare is None else await prepare(mv)
                rows = mv.check(feed, outputs)
                result = await mv.scheduler.infer(feed, rows, self.settings.request_timeout_s)
                result = result if outputs is None else {k: result[k] for k in outputs}
                if post:
                    result = post(mv, result)
                break
            except SchedulerClosed:  # swapped out while this request was being read: use the new one
                mv = self.store.get(mv.name, version)
            except (ClientError, ServerError):
                self._count_failure(mv, start)
                raise
        else:
            self._count_failure(mv, start)
            raise ServerError(f"model {mv.name} is being reloaded; retry", status=503, headers={"Retry-After": "1"})
        stats = mv.scheduler.stats
        elapsed = time.perf_counter_ns() - start
        stats.success_count += 1
        stats.success_ns += elapsed
        if self.metrics:
            self.metrics.observe(mv, "request", elapsed / 1e9)
        return result, mv

    @staticmethod
    def _count_failure(mv: ModelVersion, start_ns: int) -> None:
        mv.scheduler.stats.fail_count += 1
        mv.scheduler.stats.fail_ns += time.perf_counter_ns() - start_ns

    # -- lifecycle ------------------------------------------------------------------------
    async def _poll(self):
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.store.refresh()
            except Exception:  # keep polling; a broken repository state is reported, not fatal
                log.exception("repository poll failed")

    @contextlib.asynccontextmanager
    async def running(self):
        """Load the repository, poll it while the server runs, close the models after."""
        await self.store.refresh()
        poller = None
        if self.settings.poll_seconds > 0:
            poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            yield
        finally:
            if poller:
                poller.cancel()
            # the transports have already waited (up to the request timeout) for in-flight requests;
            # what is left is abandoned work, so a stuck batch cannot keep the process from exiting
            await self.store.close(timeout_s=1.0)
            self.tokenise_pool.shutdown(wait=False)
