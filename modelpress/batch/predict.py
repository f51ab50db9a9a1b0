"""A batch prediction job: a source read a chunk at a time, scored by ONNX Runtime at a fixed batch
size and thread count, predictions and errors appended to temporary files renamed into place
at the end, progress on stdout, and a summary.

Memory follows the chunk, not the file: a chunk of `chunk_rows` instances is read, scored in
batches of `batch_size`, written, and dropped before the next one is read.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from modelpress.batch import writers
from modelpress.batch.model import BatchModel
from modelpress.batch.sources import Chunk, Record, Settings, Source, error_entry
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, write_json_atomic

CHUNK_BYTES = 64 << 20  # the most float32 instance data a chunk holds, whatever chunk_rows says


@dataclass(frozen=True)
class BatchSettings:
    batch_size: int = 64          # instances per ONNX Runtime run
    threads: int = 0              # ONNX Runtime intra-op threads (0: every core this process may use)
    chunk_rows: int = 10_000      # the most instances read, scored and written at a time: what memory follows
    output_format: str = "jsonl"  # jsonl, csv or parquet
    key_column: str = ""          # carried through to each prediction (an image folder's key is the path)
    label_column: str = "label"   # a column to ignore when the model does not name its features
    text_column: str = "text"     # a text model's column (CSV) or key (JSONL)
    progress_seconds: float = 5.0  # at most one progress line this often

    def validate(self) -> "BatchSettings":
        for name in ("batch_size", "chunk_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelpressError(f"{name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise ModelpressError(f"threads must be a whole number >= 0 (0: every core), got {self.threads!r}")
        writers.check_format(self.output_format)
        return self


class Progress:
    """Progress lines: rows done, rows/s, and the ETA when the total (or the bytes left) is known."""

    def __init__(self, log, total: int | None, fraction, every_s: float):
        self.log, self.total, self.fraction, self.every_s = log, total, fraction, every_s
        self.start = self.last = time.perf_counter()

    def update(self, predicted: int, failed: int, *, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < self.every_s:
            return
        self.last = now
        done, elapsed = predicted + failed, max(now - self.start, 1e-9)
        share = done / self.total if self.total else self.fraction()
        line = (f"[batch-predict] {done:,} rows done ({predicted:,} predicted, {failed:,} failed), "
                f"{done / elapsed:,.0f} rows/s")
        if share and not final:
            line += f", {share:.0%}, ETA {elapsed * (1 - share) / share:,.0f} s"
        self.log(line + (f", {elapsed:.1f} s in all" if final else ""))


def predict(source: str, model: str | os.PathLike | BatchModel, destination: str | os.PathLike,
            settings: BatchSettings = BatchSettings(), *, errors_path: str | os.PathLike | None = None,
            summary_path: str | os.PathLike | None = None, log=print) -> dict:
    """Score every instance of `source` with `model` (a folder holding model.onnx, or a BatchModel);
    write predictions.<format> and summary.json into `destination`, errors.jsonl there too unless
    `errors_path` says otherwise. Returns the summary."""
    settings = replace(settings.validate(), output_format=writers.check_format(settings.output_format))
    fmt = settings.output_format
    scorer = model if isinstance(model, BatchModel) else BatchModel(model, settings.threads)
    reader = Source(source, scorer.spec, Settings(settings.key_column, settings.label_column, settings.text_column))
    folder = local_path(destination)
    paths = {"predictions": folder / writers.predictions_file(fmt),
             "errors": local_path(errors_path) if errors_path else folder / writers.ERRORS_FILE,
             "summary": local_path(summary_path) if summary_path else folder / writers.SUMMARY_FILE}
    if scorer.spec.kind != "text":  # big images: fewer rows a chunk, so a chunk stays near CHUNK_BYTES
        rows = max(settings.batch_size, CHUNK_BYTES // (4 * scorer.spec.size))
        settings = replace(settings, chunk_rows=min(settings.chunk_rows, rows))
    log(f"[batch-predict] {source} -> {paths['predictions']} with {scorer.describe()}, batch {settings.batch_size}, "
        f"chunks of {settings.chunk_rows:,}")
    try:
        read, seconds, predicted, failed = _run(scorer, reader, settings, paths, log)
    finally:
        reader.close()
    summary = {"source": source, "model": str(scorer.folder), "model_name": scorer.name, "version": scorer.version,
               "task": scorer.task, "rows_read": read, "rows_predicted": predicted, "rows_failed": failed,
               "seconds": round(seconds, 3), "rows_per_second": round(read / seconds, 1) if seconds > 0 else 0.0,
               "key": reader.key_name, "files": {k: str(v) for k, v in paths.items()},
               "settings": {k: v for k, v in asdict(settings).items() if k != "progress_seconds"}
               | {"threads": scorer.threads}}
    write_json_atomic(paths["summary"], summary)
    return summary


def _run(scorer: BatchModel, reader: Source, settings: BatchSettings, paths: dict, log):
    """Read, score and write every chunk; commit both files only when all went through.
    Returns (rows read, seconds, rows predicted, rows failed)."""
    errors = writers.ErrorWriter(paths["errors"])
    try:
        out = writers.PredictionWriter(paths["predictions"], settings.output_format, reader.key_name,
                                       scorer.score_columns)
    except BaseException:
        errors.abort()
        raise
    progress = Progress(log, reader.total, reader.fraction_read, settings.progress_seconds)
    read, check_pixels = 0, _pixel_check(scorer, log)
    start = time.perf_counter()
    try:
        for chunk in reader.chunks(settings.chunk_rows):
            check_pixels(chunk)
            for record in chunk.errors:
                errors.write(error_entry(record, reader.key_name))
            for failed in _score(scorer, chunk, settings.batch_size, out,
                                 lambda: progress.update(out.count, errors.count)):
                errors.write(error_entry(failed, reader.key_name))
            read += chunk.read
        out.commit()
        errors.commit()
    except BaseException:
        out.abort()
        errors.abort()
        raise
    progress.update(out.count, errors.count, final=True)
    return read, time.perf_counter() - start, out.count, errors.count


def _score(scorer: BatchModel, chunk: Chunk, batch_size: int, out: writers.PredictionWriter, tick):
    """Write the chunk's predictions batch by batch, `tick()` after each; yield a Record for each row the
    model fails on."""
    for at in range(0, len(chunk.keys), batch_size):
        keys, batch = chunk.keys[at:at + batch_size], chunk.inputs[at:at + batch_size]
        try:
            outputs = scorer.run(batch)
        except Exception:  # one bad row must not cost its batch: find it, row by row
            yield from _one_by_one(scorer, chunk.rows[at:at + batch_size], keys, batch, out)
        else:
            predictions, scores = scorer.predictions(outputs)
            out.write(keys, predictions, scores)
        tick()


def _one_by_one(scorer: BatchModel, rows: list[int], keys: list, batch, out: writers.PredictionWriter):
    for i, (row, key) in enumerate(zip(rows, keys)):
        try:
            outputs = scorer.run(batch[i:i + 1])
        except Exception as exc:
            value = batch[i]
            raw = value if isinstance(value, str) else np.asarray(value).reshape(-1)[:64].tolist()
            yield Record(row, key, reason=f"the model failed on this instance: {str(exc).splitlines()[0][:300]}",
                         raw=raw)
            continue
        predictions, scores = scorer.predictions(outputs)
        out.write([key], predictions, scores)


def _pixel_check(scorer: BatchModel, log):
    """A check that says once when images are on another scale than the model's training data (0..255
    files for a model trained on 0..16 digits): the predictions would be meaningless, though nothing fails."""
    spec, warned = scorer.spec, []

    def check(chunk: Chunk) -> None:
        if spec.kind != "image" or not spec.value_range or warned or not len(chunk.inputs):
            return
        high = float(np.max(chunk.inputs))
        if spec.value_range[1] > 0 and high > 2 * spec.value_range[1]:
            warned.append(high)
            log(f"[batch-predict] warning: pixels reach {high:g} but the model was trained on values "
                f"{spec.value_range[0]:g}..{spec.value_range[1]:g} (meta.json input.value_range); rescale the "
                "images the way the training data was made")

    return check


def step_result(summary: dict) -> dict:
    """The summary as `components._io.record` takes it: counts and speed as metrics, the rest as metadata."""
    metrics = {k: summary[k] for k in ("rows_read", "rows_predicted", "rows_failed", "seconds", "rows_per_second")}
    metadata = {k: v for k, v in summary.items() if k not in metrics}
    return {"metadata": metadata, "metrics": metrics}
