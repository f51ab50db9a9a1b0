"""Text in, token ids to the model, logits and class names out: the transport-free half of
serving a text classifier.

A client sends raw strings: over KServe v2 a BYTES tensor (shape [batch] or [batch, 1]; in the
binary extension each element is a 4-byte little-endian length and then its bytes, in JSON a
list of strings), over Vertex ``{"instances": [{"text": ...}]}`` or bare strings. Each becomes
a list of ``str`` here, refused with a ClientError naming the row when it is not UTF-8, empty
or not a string at all. ``TextTokeniser`` turns the list into the model's int64 inputs with
``modelpress.data.tokenizer.tokenize``, the very function the dataset step used, so the
server's ids are the training ids. ``merge_token_batches`` lets the dynamic batcher put
requests of different lengths into one batch, padded only to the longest real row of that
batch, and ``split_outputs`` hands each request its rows back.

Nothing here knows about HTTP, asyncio queues or ModelVersion, so every piece is tested
without a server; the transports and the scheduler call these functions.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.data.tokenizer import ARRAYS, LoadedTokenizer, as_text, load_tokenizer, tokenize
from modelpress.serving.errors import ClientError, ServerError
# no import from protocol: protocol decodes BYTES tensors with this module's helpers

TEXT_INPUT = "text"            # the BYTES input name a text model's metadata advertises
TEXT_DATATYPE = "BYTES"
TOKENIZER_DIR = "tokenizer"    # inside the version folder, beside model.onnx
SCORES, LABEL = "logits", "label"
_PREVIEW = 40                  # characters of a bad value quoted in an error
# A request's text is cut at this many characters per kept token before it is tokenised: a token of
# real text spans a few characters, so the cut never shortens what max_length keeps, and a 16 MB body
# cannot cost seconds and gigabytes (it did: 17 s and +2.7 GB for one 16 MB text).
CHARS_PER_TOKEN = 64


def _preview(value) -> str:
    text = repr(value)
    return text if len(text) <= _PREVIEW else text[:_PREVIEW] + "..."


# ------------------------------------------------------------------ decoding the wire forms

def bytes_tensor_from_binary(raw: bytes | memoryview, shape: Sequence[int], where: str) -> np.ndarray:
    """A BYTES tensor from the binary extension (what tritonclient sends by default): elements
    are a 4-byte little-endian length then that many bytes, row-major. protocol.parse_infer
    cannot size BYTES by ``count * itemsize``, so it hands the input's bytes here."""
    raw = memoryview(raw)
    count = math.prod(shape)
    values, at = [], 0
    while at < len(raw):
        if len(values) == count:
            raise ClientError(f"{where}: binary BYTES data holds more than the {count} element(s) shape "
                              f"{list(shape)} needs ({len(raw) - at} bytes left over)")
        if at + 4 > len(raw):
            raise ClientError(f"{where}: binary BYTES element {len(values)} is cut off inside its 4-byte "
                              "length prefix; each element is <uint32 little-endian length><bytes>")
        (n,) = struct.unpack_from("<I", raw, at)
        if at + 4 + n > len(raw):
            raise ClientError(f"{where}: binary BYTES element {len(values)} says {n} bytes but only "
                              f"{len(raw) - at - 4} remain; the length prefixes do not add up")
        values.append(bytes(raw[at + 4:at + 4 + n]))
        at += 4 + n
    if len(values) != count:
        raise ClientError(f"{where}: binary BYTES data holds {len(values)} element(s) but shape {list(shape)} "
                          f"needs {count}")
    return _object_array(values, shape)


def bytes_tensor_from_json(data, shape: Sequence[int], where: str) -> np.ndarray:
    """A BYTES tensor from a JSON infer request: ``data`` is a flat or nested list of strings
    (tritonclient with ``binary_data=False`` sends them flat, already UTF-8 text)."""
    flat: list = []

    def walk(node):
        if isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, str):
            flat.append(node.encode("utf-8"))
        else:  # a number, null or object where a string belongs
            raise ClientError(f"{where}: BYTES element {len(flat)} is a JSON {_json_type(node)} "
                              f"({_preview(node)}), not a string; send each text as a JSON string")
        return None

    if not isinstance(data, list):
        raise ClientError(f"{where}: 'data' of a BYTES input must be a list of strings, got {_json_type(data)}")
    walk(data)
    count = math.prod(shape)
    if len(flat) != count:
        raise ClientError(f"{where}: 'data' has {len(flat)} strings but shape {list(shape)} needs {count}")
    return _object_array(flat, shape)


def _object_array(values: list, shape: Sequence[int]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)  # not np.array(values): that would make 'S' and drop trailing NULs
    out[:] = values
    try:
        return out.reshape(tuple(shape))
    except ValueError:  # an empty tensor whose other dimensions are absurd: numpy cannot even describe it
        raise ClientError(f"shape {list(shape)} is too large to describe (numpy refuses it); send the real "
                          "dimensions of the texts") from None


def _json_type(value) -> str:
    return {bool: "boolean", int: "number", float: "number", type(None): "null", dict: "object",
            list: "array", str: "string"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------ to Python strings

def check_texts(values: Sequence, where: str = "text") -> list[str]:
    """Each value as a ``str`` (``tokenizer.as_text``: the rules the dataset step applies); a bad one
    is a ClientError naming its row, so the client hears a 400 rather than a pipeline error."""
    if len(values) == 0:
        raise ClientError(f"{where}: no texts; send at least one non-empty string")
    try:
        return [as_text(value, f"{where}: row {i}") for i, value in enumerate(values)]
    except ModelpressError as exc:
        raise ClientError(str(exc)) from None


def texts_from_tensor(array: np.ndarray, name: str = TEXT_INPUT) -> list[str]:
    """The rows of a BYTES tensor of shape [batch] or [batch, 1] as strings."""
    where = f"input {name!r}"
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "OSU":
        kind = getattr(array, "dtype", type(array).__name__)
        raise ClientError(f"{where} must be a BYTES tensor of texts, got {kind}; send datatype BYTES")
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != 1):
        raise ClientError(f"{where} has shape {list(array.shape)}; send one text per row: shape [batch] or "
                          "[batch, 1]")
    return check_texts(list(array.reshape(-1)), where)


def texts_from_instances(instances, key: str = TEXT_INPUT) -> list[str]:
    """Vertex instances: ``[{"text": "..."}, ...]`` or bare strings ``["...", ...]``."""
    shape_hint = f'send {{"instances": [{{"{key}": "..."}}, ...]}} or {{"instances": ["...", ...]}}'
    if not isinstance(instances, list) or not instances:
        raise ClientError(f"'instances' must be a non-empty list of texts; {shape_hint}")
    texts = []
    for i, item in enumerate(instances):
        if isinstance(item, dict):
            if key not in item:
                raise ClientError(f"instances[{i}] has no {key!r} key (it has {sorted(item)[:8]}); {shape_hint}")
            item = item[key]
        elif not isinstance(item, str):
            raise ClientError(f"instances[{i}] is a JSON {_json_type(item)}, not a string or an object with "
                              f"{key!r}; {shape_hint}")
        if not isinstance(item, str):
            raise ClientError(f"instances[{i}].{key} is a JSON {_json_type(item)} ({_preview(item)}), not a "
                              "string")
        texts.append(item)
    return check_texts(texts, "instances")


# ------------------------------------------------------------------ tokenising

def read_max_length(version_dir: str | Path) -> int:
    """The version's max_length: meta.json's ``max_length``, else the tokenizer_config.json
    ``model_max_length`` that save_tokenizer writes; a deploy mistake (not the client's) if neither."""
    folder = Path(version_dir)
    for file, key in ((folder / "meta.json", "max_length"),
                      (folder / TOKENIZER_DIR / "tokenizer_config.json", "model_max_length")):
        try:
            value = json.loads(file.read_text()).get(key) if file.is_file() else None
        except (OSError, ValueError, AttributeError) as exc:
            raise ModelpressError(f"{file} is not a readable JSON object: {exc}") from None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise ModelpressError(f"{folder}: no max_length for this text model; write it into meta.json "
                          "(\"max_length\": N, the length the model was trained with)")


def truncation_parameters(truncated: Sequence[int], max_length: int) -> dict:
    """Response parameters saying which rows lost tokens. Always present on a text response, so a
    client reads ``parameters["truncated"]`` without checking for the key."""
    return {"truncated": [int(i) for i in truncated], "max_length": int(max_length)}


class TextTokeniser:
    """The version's own tokenizer, loaded once when the version loads.

    Thread safety: ``encode`` only reads the loaded tokenizer. ``tokenize`` never changes the
    shared tokenizer's padding or truncation settings (it truncates each Encoding it just made),
    and the Rust tokenizer's encode takes ``&self``, so any number of threads may call
    ``encode`` at once; ``encode_batch`` releases the GIL while it works, which is why running it
    in a thread pool (``encode_async``) keeps the event loop free for other requests.
    """

    def __init__(self, version_dir: str | Path, max_length: int | None = None,
                 input_names: Sequence[str] | None = None):
        self.folder = Path(version_dir) / TOKENIZER_DIR
        if not self.folder.is_dir():
            raise ModelpressError(f"{version_dir} has no {TOKENIZER_DIR}/ folder: a text model's version must "
                                  "carry the tokenizer it was trained with (tokenizer.json)")
        self.loaded: LoadedTokenizer = load_tokenizer(self.folder)
        self.max_length = int(max_length) if max_length is not None else read_max_length(version_dir)
        names = list(input_names) if input_names is not None else list(ARRAYS)
        unknown = sorted(set(names) - set(ARRAYS))
        if unknown or "input_ids" not in names:
            raise ModelpressError(f"a text model takes input_ids and some of {list(ARRAYS)}; its config "
                                  f"declares {names}")
        self.input_names = names
        try:  # a max_length the tokenizer cannot honour is a deploy mistake: refuse it at load
            tokenize(["x"], self.loaded, self.max_length)
        except ModelpressError as exc:
            raise ModelpressError(f"{version_dir}: {exc}") from None

    @property
    def pad_id(self) -> int:
        return self.loaded.pad_id

    def encode(self, texts: Sequence[str | bytes]) -> tuple[dict[str, np.ndarray], list[int]]:
        """(the model's int64 inputs, padded to the longest row of these texts; the rows that were
        truncated at max_length). Bad texts are a ClientError naming the row."""
        strings = check_texts(texts)
        arrays = tokenize(strings, self.loaded, self.max_length, char_limit=CHARS_PER_TOKEN * self.max_length)
        truncated = [int(i) for i in np.flatnonzero(arrays["truncated"])]
        return {n: arrays[n] for n in self.input_names}, truncated

    async def encode_async(self, texts: Sequence[str | bytes], executor=None):
        """``encode`` in `executor` (None: the loop's default pool), off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(executor, self.encode, texts)

    def parameters(self, truncated: Sequence[int]) -> dict:
        return truncation_parameters(truncated, self.max_length)


# ------------------------------------------------------------------ dynamic batching

def text_batch_key(inputs: dict[str, np.ndarray]) -> tuple:
    """batching.batch_key without the sequence dimension: token batches of any length can share a
    batch, because merge_token_batches pads them to one width."""
    return tuple(sorted((name, a.dtype.str, a.shape[2:]) for name, a in inputs.items()))


def _real_width(batch: dict[str, np.ndarray]) -> int:
    """Columns up to the last real token of any row (rows are right-padded); the array's own
    width when there is no attention mask to tell padding from text."""
    mask = batch.get("attention_mask")
    if mask is None or mask.size == 0:
        return next(iter(batch.values())).shape[1]
    used = np.flatnonzero(mask.any(axis=0))
    return int(used[-1]) + 1 if len(used) else 1


def merge_token_batches(batches: Sequence[dict[str, np.ndarray]], pad_id: int = 0
                        ) -> tuple[dict[str, np.ndarray], list[slice]]:
    """One feed from several requests' token inputs: rows stacked in order, every row padded (at its
    end: input_ids with `pad_id`, the mask and type ids with 0) to the longest real row of the
    merged batch, so no batch pays for padding a request carried in. Returns the feed and each
    request's row slice, for ``split_outputs``. Mismatched inputs are the caller's bug: ValueError."""
    if not batches:
        raise ValueError("merge_token_batches needs at least one batch")
    names = list(batches[0])
    for b in batches:
        if set(b) != set(names):
            raise ValueError(f"token batches name different inputs: {sorted(names)} vs {sorted(b)}")
        for n in names:
            if b[n].ndim != 2 or len(b[n]) != len(b[names[0]]):
                raise ValueError(f"token input {n!r} must be [rows, length] with the same rows as the others; "
                                 f"got {list(b[n].shape)}")
    width = max(_real_width(b) for b in batches)
    total = sum(len(b[names[0]]) for b in batches)
    feed = {n: np.full((total, width), pad_id if n == "input_ids" else 0, dtype=batches[0][n].dtype)
            for n in names}
    slices, at = [], 0
    for b in batches:
        rows = len(b[names[0]])
        for n in names:
            cols = min(width, b[n].shape[1])  # columns past `width` are padding in every row
            feed[n][at:at + rows, :cols] = b[n][:, :cols]
        slices.append(slice(at, at + rows))
        at += rows
    return feed, slices


def split_outputs(outputs: dict[str, np.ndarray], slices: Sequence[slice]) -> list[dict[str, np.ndarray]]:
    """The inverse of merge_token_batches for the model's outputs: each request's rows."""
    total = slices[-1].stop if slices else 0
    for name, value in outputs.items():
        if value.ndim == 0 or len(value) != total:
            raise ValueError(f"output {name!r} has shape {list(value.shape)}, not {total} rows; a batched model "
                             "must keep the batch dimension first")
    return [{k: v[s] for k, v in outputs.items()} for s in slices]


# ------------------------------------------------------------------ outputs

def text_outputs(logits: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``logits`` FP32 [batch, classes] and, with class names, ``label`` BYTES [batch]: the
    predicted class name per row (what postprocess.labels gives an image model)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ServerError(f"the text model answered logits of shape {list(logits.shape)}, not [batch, classes]")
    out = {SCORES: logits.astype(np.float32, copy=False)}
    if class_names:
        if logits.shape[1] != len(class_names):
            raise ServerError(f"the text model answered {logits.shape[1]} classes but its meta.json lists "
                              f"{len(class_names)} class_names")
        out[LABEL] = _object_array([class_names[i].encode() for i in logits.argmax(axis=1)], (len(logits),))
    return out
