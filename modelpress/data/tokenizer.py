"""Tokenizers for text datasets: the user's own or one trained offline, and `tokenize`, the one
function the dataset step and the server share so that both turn a string into the same ids.

A tokenizer is a Hugging Face *fast* tokenizer (``tokenizer.json``, read by
``tokenizers.Tokenizer.from_file`` and ``transformers.PreTrainedTokenizerFast``). The user's
comes as a folder (the one ``save_pretrained`` writes beside a model) or a ``tokenizer.json``
file; a folder holding only a BERT ``vocab.txt`` is turned into the same WordPiece pipeline the
trained one uses. Otherwise a WordPiece tokenizer is trained on the training split, so no test
text leaks into the vocabulary.

Padding and truncation are done here, never by settings inside ``tokenizer.json``: a user's
file may carry its own, and the server and the data step must not depend on them.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path, write_json_atomic

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # [PAD] first: id 0, the embedding's padding row
MIN_VOCAB_SIZE = 64
ARRAYS = ("input_ids", "attention_mask", "token_type_ids")
# common pad token spellings (BERT, RoBERTa/XLM-R, T5) when a user's tokenizer does not say
PAD_CANDIDATES = (PAD, "<pad>", "<PAD>")


@dataclass(frozen=True)
class LoadedTokenizer:
    tokenizer: object  # tokenizers.Tokenizer, padding and truncation switched off
    pad_id: int
    added: int  # special tokens the post-processor adds to one text ([CLS] and [SEP]: 2)
    file: Path  # the tokenizer.json it was read from


# ------------------------------------------------------------------------------ building

def _bert_text_steps(tok, *, lowercase: bool):
    """BERT's normaliser, pre-tokeniser and decoder; set before training, because the trainer
    counts the pieces they produce."""
    from tokenizers import decoders, normalizers, pre_tokenizers

    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True,
                                                handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_cls_sep(tok):
    """The [CLS] text [SEP] post-processor (pairs: [CLS] a [SEP] b [SEP], b with type id 1)."""
    from tokenizers import processors

    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A lowercasing WordPiece tokenizer trained on `texts` (the training split), offline and
    deterministic: the same texts give the same tokenizer.json byte for byte.

    The vocabulary may come out smaller than `vocab_size` when the texts hold fewer distinct
    pieces; the schema records the real size, which is what a model's embedding needs.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.trainers import WordPieceTrainer

    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < MIN_VOCAB_SIZE:
        raise ModelpressError(f"vocab_size must be a whole number of at least {MIN_VOCAB_SIZE} "
                              f"(the special tokens and the characters), got {vocab_size!r}")
    texts = list(texts)
    tok = _bert_text_steps(Tokenizer(WordPiece(unk_token=UNK)), lowercase=True)
    # The trainer gives "##c" pieces ids in the order it walks a Rust HashMap of words, and
    # breaks ties between equally frequent merges by id, so two runs can learn different
    # vocabularies. Registering every "##c" up front, sorted, fixes those ids and so the ties.
    continuing = set()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            continuing.update(word[1:])
    pieces = [f"##{c}" for c in sorted(continuing)]
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + pieces,
                               min_frequency=1, show_progress=False, continuing_subword_prefix="##")
    tok.train_from_iterator(texts, trainer=trainer)
    # Rebuild from the learnt vocabulary so that only the five real special tokens are
    # "added" tokens (matched in raw text, skipped when decoding), not the "##c" pieces.
    vocab = tok.get_vocab(with_added_tokens=False)
    final = _bert_text_steps(Tokenizer(WordPiece(vocab=vocab, unk_token=UNK)), lowercase=True)
    final.add_special_tokens(SPECIAL_TOKENS)
    return _add_cls_sep(final)


def _from_vocab_txt(vocab: Path, folder: Path):
    """A BERT folder with only vocab.txt (the old "slow" tokenizer files) as a fast tokenizer."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece

    config = _read_config(folder)
    tok = Tokenizer(WordPiece.from_file(str(vocab), unk_token=UNK))
    missing = [t for t in (UNK, CLS, SEP) if tok.token_to_id(t) is None]
    if missing:
        raise ModelpressError(f"{vocab} lacks the BERT special token(s) {missing}; give a tokenizer.json "
                              "instead (tokenizer.save_pretrained(folder) writes one)")
    return _add_cls_sep(_bert_text_steps(tok, lowercase=bool(config.get("do_lower_case", True))))


# ------------------------------------------------------------------------------ loading

def _read_config(folder: Path) -> dict:
    file = folder / "tokenizer_config.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelpressError(f"{file} is not valid JSON ({exc}); fix or delete it") from None
    return data if isinstance(data, dict) else {}


def find_tokenizer_file(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(tokenizer.json or vocab.txt, the folder whose tokenizer_config.json applies, if any).

    Accepts a tokenizer.json file, a tokenizer folder, or an artifact with a tokenizer/ folder.
    """
    text = os.fspath(path)
    p = local_path(text)
    if not p.exists():
        raise ModelpressError(f"tokenizer not found: {text} (looked at {p}). Give a folder holding "
                              "tokenizer.json, a tokenizer.json file, or '' to train one on the data.")
    if p.is_file():
        if p.suffix.lower() != ".json":
            raise ModelpressError(f"tokenizer {text} is not a tokenizer.json file; give the Hugging Face "
                                  "fast tokenizer file (tokenizer.json) or the folder holding it")
        return p, p.parent
    for folder in (p, p / "tokenizer"):
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json", folder
    if (p / "vocab.txt").is_file():
        return p / "vocab.txt", p
    files = sorted(f.name for f in p.iterdir() if not f.name.startswith("."))[:12]
    hint = ""
    if any(f.endswith(".model") for f in files):
        hint = (" It holds a SentencePiece model only: convert it once with "
                "transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(folder).")
    raise ModelpressError(f"tokenizer folder {text} has no vocabulary: expected tokenizer.json (written by "
                          f"tokenizer.save_pretrained(folder)) or a BERT vocab.txt; it holds {files}.{hint}")


def _pad_id(tok, config: dict, file: Path, padding: dict | None) -> int:
    """The pad token's id: tokenizer_config.json's pad_token, then tokenizer.json's padding,
    then the usual spellings."""
    names = []
    configured = config.get("pad_token")
    if isinstance(configured, dict):  # older files: {"content": "[PAD]", "__type": "AddedToken"}
        configured = configured.get("content")
    if isinstance(configured, str):
        names.append(configured)
    if padding and isinstance(padding.get("pad_token"), str):
        names.append(padding["pad_token"])
    for name in [*names, *PAD_CANDIDATES]:
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return int(token_id)
    raise ModelpressError(f"tokenizer {file} has no padding token (looked for {[*names, *PAD_CANDIDATES]}); "
                          "set pad_token in its tokenizer_config.json to a token of its vocabulary")


@functools.lru_cache(maxsize=16)
def _load_cached(file: str, folder: str | None, stamp: tuple) -> LoadedTokenizer:
    from tokenizers import Tokenizer

    path = Path(file)
    if path.name == "vocab.txt":
        tok = _from_vocab_txt(path, Path(folder))
    else:
        try:
            tok = Tokenizer.from_file(file)
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            raise ModelpressError(f"{file} is not a readable Hugging Face tokenizer.json ({exc}); "
                                  "write it with tokenizer.save_pretrained(folder) or Tokenizer.save(path)") from None
    if tok.get_vocab_size() == 0:
        raise ModelpressError(f"tokenizer {file} has an empty vocabulary; give a trained tokenizer")
    padding = tok.padding
    tok.no_padding()
    tok.no_truncation()
    config = _read_config(Path(folder)) if folder else {}
    return LoadedTokenizer(tokenizer=tok, pad_id=_pad_id(tok, config, path, padding),
                           added=int(tok.num_special_tokens_to_add(False)), file=path)


def load_tokenizer(path: str | os.PathLike) -> LoadedTokenizer:
    """Load (once per file version: the server calls this per batch) the tokenizer at `path`."""
    file, folder = find_tokenizer_file(path)
    config = folder / "tokenizer_config.json" if folder else None
    stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f and f.is_file() else None for f in (file, config))
    return _load_cached(str(file.resolve()), str(folder.resolve()) if folder else None, stamp)


def save_tokenizer(tok, folder: Path, *, pad_id: int, config: dict | None = None,
                   max_length: int | None = None) -> None:
    """Write tokenizer.json and a tokenizer_config.json naming the special tokens, so that
    ``Tokenizer.from_file`` and ``AutoTokenizer.from_pretrained(folder)`` both read it."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = dict(config or {})
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    config["pad_token"] = tok.id_to_token(pad_id)
    for key, token in (("unk_token", UNK), ("cls_token", CLS), ("sep_token", SEP), ("mask_token", MASK)):
        if key not in config and tok.token_to_id(token) is not None:
            config[key] = token
    if max_length:
        config["model_max_length"] = int(max_length)
    write_json_atomic(folder / "tokenizer_config.json", config)


# ------------------------------------------------------------------------------ tokenising

def as_text(value, where: str) -> str:
    """`value` as a ``str``: bytes decoded as UTF-8; a non-UTF-8, empty (or only whitespace) or
    non-string value is a ModelpressError naming `where` (the dataset step and the server both ask)."""
    if isinstance(value, np.generic):  # np.bytes_ / np.str_ elements of 'S' / 'U' arrays
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelpressError(f"{where} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset "
                                  f"{exc.start}); encode each text as UTF-8") from None
    if not isinstance(value, str):
        shown = repr(value)
        raise ModelpressError(f"{where} is a {type(value).__name__} ({shown[:40]}{'...' if len(shown) > 40 else ''}), "
                              "not a string; send each text as a string")
    if not value.strip():
        raise ModelpressError(f"{where} is empty (or only whitespace); send a non-empty string, or leave it out")
    return value


def tokenize(texts: Sequence[str | bytes], tokenizer: str | os.PathLike | LoadedTokenizer,
             max_length: int, *, char_limit: int | None = None) -> dict[str, np.ndarray]:
    """Token ids of `texts`, padded to the batch's longest row and truncated at `max_length`.

    Returns int64 arrays ``input_ids``, ``attention_mask``, ``token_type_ids`` (N, L) with
    L = the longest kept row; ``lengths`` (tokens kept), ``full_lengths`` (tokens before
    truncation, special tokens included) and ``truncated`` (bool) per row. Truncation keeps
    the post-processor's tokens ([CLS] ... [SEP]), exactly as ``PreTrainedTokenizerFast(...,
    truncation=True, max_length=max_length)`` does. Bytes are decoded as UTF-8; a non-UTF-8,
    non-string or empty text is a ModelpressError naming its row.

    `char_limit` (the server's) cuts a longer string to that many characters before tokenising, so a
    megabyte of text costs no more than what max_length keeps; such a row counts as truncated and
    its ``full_lengths`` are those of the cut string.
    """
    loaded = tokenizer if isinstance(tokenizer, LoadedTokenizer) else load_tokenizer(tokenizer)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < loaded.added + 1:
        raise ModelpressError(f"max_length must be a whole number of at least {loaded.added + 1} "
                              f"({loaded.added} special token(s) and one of text), got {max_length!r}")
    strings = [as_text(t, f"text {i}") for i, t in enumerate(texts)]
    cut = np.array([bool(char_limit) and len(t) > char_limit for t in strings], dtype=bool)
    if cut.any():
        strings = [t[:char_limit] for t in strings]
    tok = loaded.tokenizer
    # Encode without the special tokens, cut the text part, then post-process: the order the
    # Rust tokenizer uses when truncation is enabled, without changing the shared tokenizer's
    # settings (the server calls this from several threads).
    encodings = tok.encode_batch(strings, add_special_tokens=False) if strings else []
    room = max_length - loaded.added
    full = np.array([len(e.ids) + loaded.added for e in encodings], dtype=np.int64)
    rows = []
    for enc in encodings:
        if len(enc.ids) > room:
            enc.truncate(room)
        rows.append(tok.post_process(enc))
    kept = np.array([len(r.ids) for r in rows], dtype=np.int64)
    width = int(kept.max()) if len(kept) else 0
    out = {"input_ids": np.full((len(rows), width), loaded.pad_id, dtype=np.int64),
           "attention_mask": np.zeros((len(rows), width), dtype=np.int64),
           "token_type_ids": np.zeros((len(rows), width), dtype=np.int64)}
    for i, r in enumerate(rows):
        n = len(r.ids)
        out["input_ids"][i, :n] = r.ids
        out["attention_mask"][i, :n] = r.attention_mask
        out["token_type_ids"][i, :n] = r.type_ids
    out["lengths"] = kept
    out["full_lengths"] = full
    out["truncated"] = (full > kept) | cut
    return out
