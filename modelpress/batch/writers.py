"""The files a batch job writes: predictions (JSONL, CSV or Parquet) and errors (JSONL).

Each is written under a temporary name in its destination folder, appended a chunk at a time,
and renamed into place when the whole job has succeeded (`commit`); on failure the temporary
file is removed (`abort`), so a reader never sees half a file.

A prediction row holds the instance's key (under the key column's name, `path` for an image
folder, `row` otherwise), `prediction` (the class name, the class index without class names,
or a regression model's value) and, for classifiers, `scores`: the logits, exactly the server's
`logits` output (softmax them for the server's `probabilities`). CSV spreads the scores over
`score_<class>` columns; Parquet keeps them as a list<float32> column and the key as a string
(`row` as int64).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from json.encoder import encode_basestring_ascii
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError

FORMATS = ("jsonl", "csv", "parquet")
ERRORS_FILE = "errors.jsonl"
SUMMARY_FILE = "summary.json"
SCORE_FORMAT = "%.9g"  # 9 significant digits: read back, every score is the same float32


def _json(value) -> str:
    """One JSON value; strings and integers without json.dumps's per-call cost."""
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, default=str)


def predictions_file(fmt: str) -> str:
    return f"predictions.{fmt}"


def check_format(fmt: str) -> str:
    fmt = str(fmt).strip().lower()
    if fmt not in FORMATS:
        raise ModelpressError(f"output_format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ModelpressError("output_format parquet needs pyarrow, which is not installed here: "
                                  ".venv/bin/pip install pyarrow (make install-ray brings it too), or use "
                                  "output_format jsonl or csv") from None
    return fmt


class _Pending:
    """A file being written under a hidden temporary name beside its final path."""

    def __init__(self, final: Path, mode: str = "w"):
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        self.file = os.fdopen(fd, mode, **({"newline": "", "encoding": "utf-8"} if "b" not in mode else {}))

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class ErrorWriter:
    """errors.jsonl: one object per bad row: its row (and line, key), the row as read, the reason."""

    def __init__(self, final: Path):
        self.pending = _Pending(final)
        self.count = 0

    def write(self, entry: dict) -> None:
        try:
            line = json.dumps(entry, allow_nan=False, default=str)
        except ValueError:  # NaN in a JSON line as parsed: keep the row as text, the file stays strict JSON
            line = json.dumps({**entry, "input": repr(entry.get("input"))}, default=str)
        self.pending.file.write(line + "\n")
        self.count += 1

    def commit(self) -> None:
        self.pending.commit()

    def abort(self) -> None:
        self.pending.abort()


class PredictionWriter:
    """Prediction rows appended a batch at a time, in the chosen format."""

    def __init__(self, final: Path, fmt: str, key_name: str, score_columns):
        self.fmt, self.key_name, self.score_columns = fmt, key_name, score_columns
        self.pending = _Pending(final, "wb" if fmt == "parquet" else "w")
        self._csv = None
        self._parquet = None
        self.count = 0

    def write(self, keys: list, predictions: list, scores: np.ndarray | None) -> None:
        if not keys:
            return
        self.count += len(keys)
        if self.fmt == "parquet":
            self._parquet_rows(keys, predictions, scores)
            return
        # scores as text once per batch: "%.9g" is float32's round trip and formats several times faster
        # than JSON's float64 repr (the row loop costs more than a small model's inference)
        if scores is None:
            score_text = None
        elif np.isfinite(scores).all():
            score_text = [SCORE_FORMAT % v for v in scores.reshape(-1).tolist()]
        else:  # NaN/inf logits (a broken model) are written as JSON writes them
            score_text = [json.dumps(v) for v in scores.reshape(-1).tolist()]
        width = scores.shape[1] if scores is not None else 0
        if self.fmt == "jsonl":
            self._jsonl(keys, predictions, score_text, width)
        else:
            self._csv_rows(keys, predictions, score_text, width)

    def _jsonl(self, keys, predictions, score_text, width) -> None:
        head = f"{{{_json(self.key_name)}: "
        if score_text is None:
            rows = [f'{head}{_json(k)}, "prediction": {_json(p)}}}' for k, p in zip(keys, predictions)]
        else:
            scores = [", ".join(score_text[i:i + width]) for i in range(0, len(score_text), width)]
            rows = [f'{head}{_json(k)}, "prediction": {_json(p)}, "scores": [{s}]}}'
                    for k, p, s in zip(keys, predictions, scores)]
        self.pending.file.write("\n".join(rows) + "\n")

    def _csv_rows(self, keys, predictions, score_text, width) -> None:
        if self._csv is None:
            self._csv = csv.writer(self.pending.file)
            self._csv.writerow([self.key_name, "prediction", *(self.score_columns(width) if width else [])])
        values = [json.dumps(p) if isinstance(p, list) else p for p in predictions]  # a multi-output regression
        if score_text is None:
            self._csv.writerows(zip(keys, values))
        else:
            self._csv.writerows([k, v, *score_text[i * width:(i + 1) * width]]
                                for i, (k, v) in enumerate(zip(keys, values)))

    def _parquet_rows(self, keys, predictions, scores) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        key_values = pa.array(keys, type=pa.int64()) if self.key_name == "row" else pa.array(
            [str(k) for k in keys], type=pa.string())
        columns = {self.key_name: key_values, "prediction": pa.array(predictions)}
        if scores is not None:
            columns["scores"] = pa.array(list(scores.astype(np.float32, copy=False)), type=pa.list_(pa.float32()))
        table = pa.table(columns)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.pending.file, table.schema)
        self._parquet.write_table(table.cast(self._parquet.schema))  # every chunk as the first one's types

    def commit(self) -> None:
        if self.fmt == "csv" and self._csv is None:  # nothing predicted: still a file with its header
            csv.writer(self.pending.file).writerow([self.key_name, "prediction"])
        if self.fmt == "parquet":
            self._close_parquet()
        self.pending.commit()

    def _close_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._parquet is None:  # nothing predicted: an empty table of the key and prediction
            key_type = pa.int64() if self.key_name == "row" else pa.string()
            schema = pa.schema([(self.key_name, key_type), ("prediction", pa.string())])
            self._parquet = pq.ParquetWriter(self.pending.file, schema)
        self._parquet.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if self._parquet is not None:
                self._parquet.close()
        self.pending.abort()
