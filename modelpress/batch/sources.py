"""Instances from a source, a chunk at a time: CSV, JSONL, NPZ and image folders, local or gs://.

Each reader yields `Chunk`s of at most `chunk_rows` instances, so memory does not grow with the
file. A row that cannot become an instance (wrong number of fields, a non-number, NaN, wrong
shape, an undecodable image, an empty text) becomes an error record in its chunk; a mistake
that concerns the whole source (a missing column, a model that takes other features) is a
ModelpressError before anything is scored.

Every instance has a key: the `key_column` value when given (an image's relative path in a
folder), else its 0-based row among the source's data rows.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from modelpress.batch.model import InputSpec
from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.data.sources import BUILTIN_SOURCES
from modelpress.data.text import TEXT_SUFFIXES
from modelpress.data.tokenizer import as_text

RAW_PREVIEW = 2000  # characters of a bad row kept in the errors file
FORMATS_HINT = "a .csv, .jsonl or .npz file, a folder of images, or a built-in dataset ('digits', 'diabetes')"


@dataclass
class Chunk:
    keys: list = field(default_factory=list)           # one per good instance
    rows: list = field(default_factory=list)           # each good instance's row in the source
    inputs: list | np.ndarray = field(default_factory=list)  # instances (spec.shape) or texts
    errors: list = field(default_factory=list)         # Records of the bad rows (see error_entry)
    read: int = 0                                      # instances read, good and bad


@dataclass
class Settings:
    """Which columns mean what (CSV/JSONL/NPZ)."""
    key_column: str = ""
    label_column: str = "label"   # ignored when the model names its features; never a feature
    text_column: str = "text"     # a text model's input column (or JSONL key)


class Source:
    """An opened source: `key_name`, `total` (instances, when known before reading) and `chunks()`."""

    def __init__(self, location: str, spec: InputSpec, settings: Settings):
        self.location, self.spec, self.settings = location, spec, settings
        self.path = local_path(location)
        self.key_name = settings.key_column or "row"
        self.total: int | None = None
        self._lines: _Lines | None = None
        self._records: Iterator[Record] | None = None
        self._chunks = None
        if not str(location).strip():
            raise ModelpressError(f"the batch source is empty: give {FORMATS_HINT}")
        builtin = location in BUILTIN_SOURCES
        if not builtin and not self.path.exists():
            raise ModelpressError(f"batch source not found: {location} (looked at {self.path}); give {FORMATS_HINT}")
        suffix = "" if builtin else self.path.suffix.lower()
        textual = not builtin and not self.path.is_dir() and suffix in TEXT_SUFFIXES
        if spec.kind == "text" and not textual:
            raise ModelpressError(f"{location}: a text model scores texts; give a .csv or .jsonl file with a "
                                  f"{settings.text_column!r} column")
        from modelpress.batch import arrays  # here: it builds on this module's Chunk and Record

        if builtin:
            self._chunks = arrays.builtin_chunks(self, spec)
        elif self.path.is_dir():
            self._records = arrays.image_folder(self, spec)
        elif suffix == ".npz":
            self._chunks = arrays.npz_chunks(self, spec)
        elif textual:
            self._lines = _Lines(self.path)
            reader = _csv_records if suffix == ".csv" else _jsonl_records
            try:
                self._records = reader(self, spec, self._lines)
            except BaseException:
                self.close()
                raise
        else:
            raise ModelpressError(f"cannot tell the format of {location}: give {FORMATS_HINT}")

    def fraction_read(self) -> float | None:
        """How far through the source the reader is (bytes, for text files), for the ETA."""
        return self._lines.done / self._lines.size if self._lines and self._lines.size else None

    def chunks(self, chunk_rows: int) -> Iterator[Chunk]:
        if self._chunks is not None:
            yield from self._chunks(chunk_rows)
            return
        yield from _chunked(self._records, chunk_rows, self.spec)

    def close(self) -> None:
        if self._lines:
            self._lines.file.close()


@dataclass
class Record:
    row: int
    key: object
    value: object = None          # the instance (np.ndarray of spec.shape, or str); None when bad
    reason: str | None = None
    raw: object = None            # the row as read, for the errors file
    line: int | None = None       # the file's line, for text files


def error_entry(record: Record, key_name: str) -> dict:
    entry = {"row": record.row, key_name: record.key} if key_name != "row" else {"row": record.row}
    if record.line is not None:
        entry["line"] = record.line
    raw = [_cut(v) for v in record.raw] if isinstance(record.raw, list) else _cut(record.raw)
    return {**entry, "input": raw, "reason": record.reason}


def _cut(value):
    """A long string of a bad row, shortened for the errors file."""
    if isinstance(value, str) and len(value) > RAW_PREVIEW:
        return value[:RAW_PREVIEW] + f"... ({len(value)} characters)"
    return value


def _chunked(records: Iterable[Record], chunk_rows: int, spec: InputSpec) -> Iterator[Chunk]:
    chunk = Chunk()
    for record in records:
        chunk.read += 1
        if record.reason is None:
            chunk.keys.append(record.key)
            chunk.rows.append(record.row)
            chunk.inputs.append(record.value)
        else:
            chunk.errors.append(record)
        if chunk.read >= chunk_rows:
            yield _finish(chunk, spec)
            chunk = Chunk()
    if chunk.read:
        yield _finish(chunk, spec)


def _finish(chunk: Chunk, spec: InputSpec) -> Chunk:
    if spec.kind != "text":
        chunk.inputs = np.stack(chunk.inputs) if chunk.inputs else np.zeros((0, *spec.shape), np.float32)
    return chunk


class _Lines:
    """A text file's lines, decoded, counting the bytes read (the ETA of a file of unknown rows).

    Split on b"\\n" only (a JSON string may hold U+2028 raw). Bytes that are not UTF-8 are kept as
    surrogates, so only the row holding them fails (a text by `_text_value`, a number by float())."""

    def __init__(self, path: Path):
        self.file, self.size, self.done = open(path, "rb"), path.stat().st_size, 0

    def __iter__(self):
        first = True
        for raw in self.file:
            self.done += len(raw)
            text = raw.decode("utf-8", errors="surrogateescape")
            if first:
                text, first = text.removeprefix("\ufeff"), False  # the byte-order mark spreadsheets write
            yield text


def _text_value(value, where: str) -> str:
    """A text instance, or ValueError with the reason (empty, not a string, not UTF-8)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where} is not valid UTF-8; save the file as UTF-8") from None
    try:
        return as_text(value, where)
    except ModelpressError as exc:
        raise ValueError(str(exc)) from None


def _numbers(values, spec: InputSpec) -> np.ndarray:
    """One instance from a list of numbers (flat, or in the model's shape), or ValueError."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError):  # ragged nesting
        raise ValueError("the values are not a regular array of numbers") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"the values are not all numbers (found {array.dtype.kind!r}-kind values such as "
                         f"{array.reshape(-1)[:1].tolist()}); features must be numeric")
    if array.size != spec.size or (array.ndim != 1 and array.shape != spec.shape):
        raise ValueError(f"shape {list(array.shape)}; the model takes {list(spec.shape)} "
                         f"(or {spec.size} values in a flat list)")
    array = array.astype(np.float32).reshape(spec.shape)
    if not np.isfinite(array).all():
        raise ValueError("holds NaN or infinite values; remove or impute them first")
    return array


def feature_columns(header: list[str], spec: InputSpec, settings: Settings, location: str) -> list[int]:
    """The header indices of the model's features: the names meta.json records, else every column but
    the key and the label, in order."""
    if spec.feature_names:
        missing = [n for n in spec.feature_names if n not in header]
        if missing:
            raise ModelpressError(f"{location} lacks the model's feature column(s) {missing[:8]} (meta.json "
                                  f"input.feature_names); its columns are {header[:16]}")
        return [header.index(n) for n in spec.feature_names]
    skip = {settings.key_column, settings.label_column} - {""}
    columns = [i for i, h in enumerate(header) if h not in skip]
    if len(columns) != spec.size:
        shown = f"{header[:8]}{'...' if len(header) > 8 else ''}"
        raise ModelpressError(f"{location} has {len(columns)} feature column(s) ({shown}, without key "
                              f"{settings.key_column!r} and label {settings.label_column!r}); the model takes "
                              f"{spec.size} features. Drop the other columns or set key_column / label_column")
    return columns


def _csv_records(source: Source, spec: InputSpec, lines: _Lines) -> Iterator[Record]:
    settings, location = source.settings, source.location
    csv.field_size_limit(max(csv.field_size_limit(), min(source.path.stat().st_size, 2**31 - 1)))
    reader = csv.reader(lines)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ModelpressError(f"{location} is empty: it needs a header row and data rows") from None
    key_at = _column(header, settings.key_column, "key_column", location) if settings.key_column else None
    if spec.kind == "text":
        columns = [_column(header, settings.text_column, "text_column", location)]
    else:
        columns = feature_columns(header, spec, settings, location)
    return _csv_rows(reader, header, columns, key_at, spec, settings)  # the header is checked before any row


def _csv_rows(reader, header: list[str], columns: list[int], key_at: int | None, spec: InputSpec,
              settings: Settings) -> Iterator[Record]:
    row = -1
    while True:
        line = reader.line_num + 1  # where the record starts (a quoted field may span lines)
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row += 1
            yield Record(row, row, reason=f"line {line}: {exc}; check the quoting", line=line)
            continue
        if not fields or all(not f.strip() for f in fields):
            continue
        row += 1
        key = fields[key_at] if key_at is not None and key_at < len(fields) else row
        record = Record(row, key, raw=fields, line=line)
        if len(fields) != len(header):
            record.reason = f"{len(fields)} fields, the header has {len(header)}"
        elif spec.kind == "text":
            try:
                record.value = _text_value(fields[columns[0]], f"column {settings.text_column!r}")
            except ValueError as exc:
                record.reason = str(exc)
        else:
            record.value, record.reason = _csv_numbers(fields, columns, header, spec)
        yield record


def _csv_numbers(fields: list[str], columns: list[int], header: list[str], spec: InputSpec):
    values = np.empty(len(columns), dtype=np.float32)
    for j, i in enumerate(columns):
        try:
            v = float(fields[i])
        except ValueError:
            return None, f"column {header[i]!r}: {fields[i]!r} is not a number"
        if not math.isfinite(v):
            return None, f"column {header[i]!r}: {fields[i]!r} is not finite; remove or impute NaN/inf values"
        values[j] = v
    return values.reshape(spec.shape), None


def _column(header: list[str], name: str, setting: str, location: str) -> int:
    if name not in header:
        raise ModelpressError(f"{setting} {name!r} is not a column of {location}; its columns are {header[:16]}")
    return header.index(name)


def _jsonl_records(source: Source, spec: InputSpec, lines: _Lines) -> Iterator[Record]:
    settings = source.settings
    row = -1
    for line, content in enumerate(lines, start=1):
        content = content.rstrip("\r\n")
        if not content.strip():
            continue
        row += 1
        record = Record(row, row, raw=content, line=line)
        try:
            obj = json.loads(content)
        except ValueError as exc:
            record.reason = f"not valid JSON ({exc})"
            yield record
            continue
        record.raw = obj
        try:
            if settings.key_column:
                if not isinstance(obj, dict) or settings.key_column not in obj:
                    raise ValueError(f"no key_column {settings.key_column!r} in this line")
                record.key = obj[settings.key_column]
            record.value = _json_instance(obj, spec, settings)
        except ValueError as exc:
            record.reason = str(exc)
        yield record


def _json_instance(obj, spec: InputSpec, settings: Settings):
    if spec.kind == "text":
        if isinstance(obj, dict):
            if settings.text_column not in obj:
                raise ValueError(f"no {settings.text_column!r} key (it has {sorted(obj)[:8]}); write "
                                 f'{{"{settings.text_column}": "..."}} or a bare string per line')
            obj = obj[settings.text_column]
        return _text_value(obj, "the text")
    if isinstance(obj, dict):
        if "instance" in obj:
            obj = obj["instance"]
        elif spec.feature_names and all(n in obj for n in spec.feature_names):
            obj = [obj[n] for n in spec.feature_names]
        else:
            named = f" or the model's features {list(spec.feature_names[:4])}..." if spec.feature_names else ""
            raise ValueError(f'an object needs an "instance" list{named}; it has keys {sorted(obj)[:8]}')
    if not isinstance(obj, list):
        raise ValueError(f"a JSON {type(obj).__name__}, not a list of numbers")
    return _numbers(obj, spec)
