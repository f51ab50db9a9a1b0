"""Text datasets: a CSV or JSONL file with a text column and a label column -> the text dataset
artifact (token ids per split, the raw texts, the tokenizer, schema.json).

The artifact is a directory holding
  - ``train.npz``, ``validation.npz``, ``test.npz``: int64 ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (N, L; L = the split's longest row, at most ``max_length``), ``lengths``
    (tokens kept), ``full_lengths`` (before truncation) and ``y`` (class indices);
  - ``{split}_text.jsonl``: each row's raw text and label, in the same order, so a scorer or a
    server test can send the very strings the ids came from (and a later step can tokenise
    again with a model's own tokenizer);
  - ``tokenizer/``: ``tokenizer.json`` + ``tokenizer_config.json``, the one ``tokenize`` and the
    server use;
  - ``schema.json``: ``input_kind: text``, classes, ``max_length``, ``vocab_size``, the training
    split's token-length distribution.
Splits are the numeric datasets' stratified ``split_indices``; a trained tokenizer sees only the
training split.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, read_json, write_json_atomic, write_text_atomic
from modelpress.data.dataset import SCHEMA_VERSION, SPLITS, _classification, check_fractions, read_schema
from modelpress.data.sources import RawData
from modelpress.data.tokenizer import (ARRAYS, load_tokenizer, save_tokenizer, tokenize, train_tokenizer)

TEXT_SUFFIXES = (".csv", ".jsonl", ".ndjson")


@dataclass
class TextSource:
    texts: list[str]
    raw: RawData  # labels and line numbers, for the label checks shared with numeric data


@dataclass
class TextSplit:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    lengths: np.ndarray
    full_lengths: np.ndarray
    y: np.ndarray
    texts: list[str]

    def inputs(self) -> dict[str, np.ndarray]:
        """The model's named inputs."""
        return {k: getattr(self, k) for k in ARRAYS}


@dataclass
class TextDataset:
    train: TextSplit
    validation: TextSplit
    test: TextSplit
    schema: dict
    tokenizer_dir: str

    @property
    def class_names(self) -> list[str]:
        return list(self.schema["class_names"])

    @property
    def max_length(self) -> int:
        return int(self.schema["max_length"])


# ------------------------------------------------------------------------------ sources

def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")  # -sig: drop the byte-order mark spreadsheets write
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ModelpressError(f"{source} line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the "
                              "file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.csv > out.csv)") from None


def _label_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value).strip()


def _read_csv(text: str, source: str, text_column: str, label_column: str):
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a long text is a long field, not a quoting slip
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ModelpressError(f"{source} is empty: it needs a header row naming the text and label "
                              "columns, and data rows") from None
    for role, name in (("text", text_column), ("label", label_column)):
        if name not in header:
            raise ModelpressError(f"{role} column {name!r} is not in {source}; its columns are {header}. "
                                  f"Set {role}_column to the one holding the {role}s.")
    ti, li = header.index(text_column), header.index(label_column)
    rows = []
    while True:
        line = reader.line_num + 1  # where the record starts (quoted fields may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ModelpressError(f"{source} line {line}: {exc}; check the quoting") from None
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ModelpressError(f"{source} line {line}: {len(row)} fields, the header has {len(header)} "
                                  "(quote texts that hold commas or line breaks)")
        rows.append((line, row[ti], row[li].strip()))
    return rows


def _read_jsonl(text: str, source: str, text_column: str, label_column: str):
    rows = []
    # split on \n only: str.splitlines also breaks at U+2028 and other separators JSON strings may hold raw
    for line, content in enumerate((part.rstrip("\r") for part in text.split("\n")), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except ValueError as exc:
            raise ModelpressError(f"{source} line {line} is not valid JSON ({exc}); each line must be "
                                  "one object such as {\"text\": \"...\", \"label\": \"...\"}") from None
        if not isinstance(record, dict):
            raise ModelpressError(f"{source} line {line} is a JSON {type(record).__name__}, not an object")
        for role, name in (("text", text_column), ("label", label_column)):
            if name not in record:
                raise ModelpressError(f"{role} column {name!r} is not in {source} line {line}; its keys are "
                                      f"{sorted(record)}. Set {role}_column to the one holding the {role}s.")
        value = record[text_column]
        if not isinstance(value, str):
            raise ModelpressError(f"{source} line {line}: {text_column!r} is a JSON "
                                  f"{type(value).__name__}, not a string")
        rows.append((line, value, _label_text(record[label_column])))
    return rows


def load_text_source(source: str, *, text_column: str = "text", label_column: str = "label") -> TextSource:
    """Read a CSV or JSONL text source: its texts, raw labels and each row's line number."""
    if not isinstance(source, str) or not source.strip():
        raise ModelpressError("text dataset source is empty: give a .csv or .jsonl file")
    path = local_path(source)
    if not path.is_file():
        raise ModelpressError(f"text dataset source not found: {source} (looked at {path}); give a "
                              ".csv or .jsonl file with a text and a label column")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise ModelpressError(f"cannot tell the format of {source}: a text dataset is a file ending in "
                              f"{', '.join(TEXT_SUFFIXES)}")
    text = _decode(path.read_bytes(), source)
    read = _read_csv if suffix == ".csv" else _read_jsonl
    rows = read(text, source, text_column, label_column)
    if not rows:
        raise ModelpressError(f"{source} is empty: it holds no data rows")
    for line, value, _ in rows:
        if not value.strip():
            raise ModelpressError(f"{source} line {line}: the text ({text_column!r}) is empty; "
                                  "fill it in or drop the row")
    lines = np.asarray([r[0] for r in rows])
    raw = RawData(x=np.zeros((len(rows), 0), dtype=np.float32), labels=np.asarray([r[2] for r in rows]),
                  kind="text", source=source, line_numbers=lines, target_name=label_column)
    return TextSource(texts=[r[1] for r in rows], raw=raw)


# ------------------------------------------------------------------------------ the artifact

def length_stats(full_lengths: np.ndarray, max_length: int) -> dict:
    """Token counts before truncation ([CLS]/[SEP] included) and the share cut at max_length."""
    q = {f"p{p}": int(np.percentile(full_lengths, p, method="higher")) for p in (50, 95, 99)}
    return {"min": int(full_lengths.min()), "mean": round(float(full_lengths.mean()), 2), **q,
            "max": int(full_lengths.max()),
            "truncated_share": round(float((full_lengths > max_length).mean()), 4),
            "truncated_rows": int((full_lengths > max_length).sum())}


def make_text_dataset(source: str, out_dir: str, *, text_column: str = "text", label_column: str = "label",
                      tokenizer: str = "", vocab_size: int = 8000, max_length: int = 128,
                      val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0,
                      log: Callable[[str], None] = print) -> dict:
    """Load a text source, split it, tokenise it and write the text dataset artifact. Returns the schema.

    `tokenizer`: the user's (a folder with tokenizer.json or vocab.txt, or a tokenizer.json file),
    or "" to train a WordPiece tokenizer of `vocab_size` on the training split.
    """
    check_fractions(val_fraction, test_fraction)
    data = load_text_source(source, text_column=text_column, label_column=label_column)
    y, parts, labels = _classification(data.raw, source, val_fraction=val_fraction,
                                       test_fraction=test_fraction, seed=seed)
    train_texts = [data.texts[i] for i in parts["train"]]
    if tokenizer:
        loaded = load_tokenizer(tokenizer)
        tok, pad_id, origin = loaded.tokenizer, loaded.pad_id, str(tokenizer)
        config = json.loads(loaded.file.with_name("tokenizer_config.json").read_text(encoding="utf-8")) \
            if loaded.file.with_name("tokenizer_config.json").is_file() else {}
        log(f"[make-dataset] tokenizer: {tokenizer} (vocabulary {tok.get_vocab_size()}; vocab_size ignored)")
    else:
        tok, pad_id, origin, config = train_tokenizer(train_texts, vocab_size), 0, "trained", {}
        log(f"[make-dataset] tokenizer: WordPiece trained on {len(train_texts)} training texts "
            f"(vocabulary {tok.get_vocab_size()} of {vocab_size} asked)")

    with atomic_dir(out_dir) as tmp:
        save_tokenizer(tok, tmp / "tokenizer", pad_id=pad_id, config=config, max_length=max_length)
        # tokenise through the saved files, exactly as the server will
        loaded = load_tokenizer(tmp / "tokenizer")
        stats = None
        for name in SPLITS:
            idx = parts[name]
            texts = [data.texts[i] for i in idx]
            arrays = tokenize(texts, loaded, max_length)
            if name == "train":
                stats = length_stats(arrays["full_lengths"], max_length)
            cut = int(arrays["truncated"].sum())
            if cut:
                log(f"[make-dataset] {name}: {cut} text(s) ({cut / len(texts):.1%}) longer than max_length {max_length} "
                    "tokens, truncated")
            np.savez(tmp / f"{name}.npz", y=y[idx], **{k: arrays[k] for k in (*ARRAYS, "lengths", "full_lengths")})
            lines = [json.dumps({"text": t, "label": labels["class_names"][int(c)], "y": int(c),
                                 "line": int(data.raw.line_numbers[i])})
                     for t, c, i in zip(texts, y[idx], idx)]
            write_text_atomic(tmp / f"{name}_text.jsonl", "".join(f"{s}\n" for s in lines))
        schema = {
            "format_version": SCHEMA_VERSION, "task": "classification", "input_kind": "text", "dtype": "int64",
            **labels, "max_length": max_length, "vocab_size": int(tok.get_vocab_size()),
            "token_lengths": stats,
            "tokenizer": {"path": "tokenizer", "source": origin, "pad_id": pad_id, "special_tokens_added": loaded.added,
                          "requested_vocab_size": vocab_size if not tokenizer else None},
            "input": {"kind": "text", "names": list(ARRAYS), "dtype": "int64", "shape": [-1, -1],
                      "preprocessing": "send raw UTF-8 strings; the server tokenises them with tokenizer/ "
                                       f"(padded to the batch's longest row, truncated at {max_length})"},
            "source": source, "text_column": text_column, "label_column": label_column, "seed": seed,
            "fractions": {"validation": val_fraction, "test": test_fraction},
            "splits": {k: int(len(v)) for k, v in parts.items()},
        }
        write_json_atomic(tmp / "schema.json", schema)
    return schema


def is_text_dataset(path: str) -> bool:
    """Whether the dataset artifact at `path` is a text one (every step that reads a dataset asks)."""
    schema = local_path(path) / "schema.json"
    return schema.is_file() and read_json(schema).get("input_kind") == "text"


def _read_texts(path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def load_text_dataset(path: str) -> TextDataset:
    root = local_path(path)
    schema = read_schema(path, text=True)
    splits = {}
    for name in SPLITS:
        with np.load(root / f"{name}.npz", allow_pickle=False) as a:
            arrays = {k: a[k] for k in a.files}
        splits[name] = TextSplit(texts=_read_texts(root / f"{name}_text.jsonl"), **arrays)
    return TextDataset(**splits, schema=schema, tokenizer_dir=str(root / schema["tokenizer"]["path"]))


# ------------------------------------------------------------------------------ synthetic reviews

_PRODUCTS = ["headphones", "kettle", "backpack", "phone case", "desk lamp", "blender", "keyboard",
             "running shoes", "coffee grinder", "tent", "monitor", "vacuum", "jacket", "router"]
_ASPECTS = ["battery", "sound", "build quality", "price", "design", "delivery", "fit", "screen",
            "instructions", "customer service", "material", "noise level", "size", "warranty"]
_GOOD = ["great", "excellent", "solid", "impressive", "lovely", "reliable", "superb", "decent", "fantastic"]
_BAD = ["awful", "poor", "flimsy", "disappointing", "terrible", "cheap", "useless", "broken", "mediocre"]
_FILLER = ["I bought it for my sister.", "It arrived on a Tuesday.", "I have used it for two weeks.",
           "My old one lasted years.", "I compared several brands first.", "The box was plain brown."]
_VERDICT = {1: ["Would buy again.", "Highly recommended.", "I am keeping it.", "Five stars from me."],
            -1: ["Returning it.", "Avoid this one.", "Not worth the money.", "One star."]}


def synthetic_reviews(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` made-up product reviews labelled "positive" or "negative", for tests and demos.

    Each review mixes aspect sentences of either polarity (some negated: "not great"), neutral
    filler and usually a verdict; the label is the sign of the polarities, the verdict counting
    double, with 3% of labels flipped, so a model must weigh several cues (learnable, not trivial).
    """
    rng = random.Random(seed)
    reviews = []
    for _ in range(n):
        product = rng.choice(_PRODUCTS)
        sentences, score = [f"I got the {product}."], 0.0
        for _ in range(rng.randint(1, 5)):
            polarity = rng.choice((1, -1))
            negated = rng.random() < 0.2
            word = rng.choice(_GOOD if (polarity > 0) != negated else _BAD)
            sentences.append(f"The {rng.choice(_ASPECTS)} is {'not ' if negated else ''}{word}.")
            score += polarity
        sentences += rng.sample(_FILLER, rng.randint(0, 3))
        if rng.random() < 0.8:
            verdict = rng.choice((1, -1))
            sentences.append(rng.choice(_VERDICT[verdict]))
            score += 2 * verdict
        if score == 0:
            score = rng.choice((1, -1))
        label = "positive" if score > 0 else "negative"
        if rng.random() < 0.03:
            label = "negative" if label == "positive" else "positive"
        head, rest = sentences[0], sentences[1:]
        rng.shuffle(rest)
        reviews.append((" ".join([head, *rest]), label))
    return reviews


def write_reviews(path: str, n: int, seed: int = 0) -> str:
    """Write `synthetic_reviews(n, seed)` as a .csv (text,label) or .jsonl file; returns the path."""
    rows = synthetic_reviews(n, seed)
    if str(path).lower().endswith(".csv"):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
        write_text_atomic(local_path(path), buf.getvalue())
    else:
        write_text_atomic(local_path(path), "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    return str(path)
