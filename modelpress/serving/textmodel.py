"""A text classifier version in the server: its tokenizer, what it accepts and what it says.

A version is a text model when its folder holds ``tokenizer/`` (tokenizer.json or vocab.txt),
or when its meta.json says ``input.kind == "text"`` (then a missing tokenizer is a load error
naming the fix). Its config.pbtxt declares the token inputs (``input_ids``,
``attention_mask``[, ``token_type_ids``] INT64 [batch, sequence]), exactly what NVIDIA Triton
serves from the same repository; on top of those this server takes texts:

- KServe v2: one BYTES input ``text``, shape [batch] or [batch, 1] (the metadata advertises
  [-1, 1], Triton's shape for a batched string input), tokenised with the version's own
  tokenizer in a thread pool, off the event loop. Or the token inputs themselves, as a Triton
  client sends them; they are checked (ids in the tokenizer's vocabulary, a 0/1 mask, segment
  ids the model has, at most max_length real tokens), so that one bad request cannot fail the others
  batched with it.
- Vertex AI: ``{"instances": [{"text": "..."}, ...]}`` or bare strings ``{"instances": ["..."]}``.

Every text response says which rows lost tokens at max_length. v2: the response's
``parameters`` ``{"truncated": [row indices], "max_length": N}`` (token-id requests are never
truncated: longer ones are refused). Vertex: the same object as a top-level ``"parameters"``,
and ``"truncated": true|false`` in each prediction beside ``logits`` and ``label`` (Vertex's
online prediction front end passes predictions on as they are, so the per-prediction field is
the one a Vertex client is sure to see).

Batching: the scheduler's key ignores the sequence length, so requests of any length share a
batch; each batch is padded only to its longest real row (``text.text_batch_key``,
``text.merge_token_batches``). A model without an ``attention_mask`` input could not tell that
padding from text, so there only equal lengths share a batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.serving import postprocess
from modelpress.serving.batching import batch_key, check_rows, concatenate
from modelpress.serving.errors import ClientError
from modelpress.serving.text import (LABEL, TEXT_DATATYPE, TEXT_INPUT, TOKENIZER_DIR, TextTokeniser,
                                     merge_token_batches, text_batch_key, texts_from_tensor)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
SEGMENTS = 2  # token type ids where meta.json does not say: 0, and 1 for BERT's pairs


def is_text_version(folder: Path, info: postprocess.ModelInfo) -> bool:
    tok = folder / TOKENIZER_DIR
    return (tok / "tokenizer.json").is_file() or (tok / "vocab.txt").is_file() or info.input.get("kind") == "text"


def tokenizer_stamp(folder: Path) -> tuple:
    """What must change before a text version that failed to load is tried again."""
    def mtime(p: Path) -> float | None:
        return p.stat().st_mtime if p.exists() else None
    return tuple(mtime(folder / TOKENIZER_DIR / f) for f in TOKENIZER_FILES)


class TextModel:
    """The text half of a loaded version (``ModelVersion.text``); None for numeric versions."""

    def __init__(self, folder: Path, input_names: list[str], segments: int = SEGMENTS):
        self.tokeniser = TextTokeniser(folder, input_names=input_names)  # refuses a version without tokenizer/
        self.segments = max(1, int(segments))
        self.input_names = list(input_names)
        self.max_length = self.tokeniser.max_length
        self.vocab_size = int(self.tokeniser.loaded.tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def load(cls, folder: Path, config, info: postprocess.ModelInfo) -> "TextModel | None":
        """The version's tokenizer when it is a text model, else None (reads files: off the loop)."""
        if not is_text_version(folder, info):
            return None
        segments = info.input.get("segments", SEGMENTS)  # meta.json: the model's token type embeddings
        return cls(folder, [t.name for t in config.input], segments if isinstance(segments, int) else SEGMENTS)

    # -- batching (the scheduler's key and merge) ----------------------------------------
    def key(self, inputs: dict[str, np.ndarray]) -> tuple:
        if "attention_mask" not in inputs:  # nothing tells such a model which tokens are padding: same lengths only
            return batch_key(inputs)
        return text_batch_key(inputs)

    def merge(self, batches: list[dict[str, np.ndarray]]):
        if "attention_mask" not in batches[0]:
            return concatenate(batches)
        return merge_token_batches(batches, self.tokeniser.pad_id)

    # -- requests -----------------------------------------------------------------------
    async def feed(self, mv, inputs: dict[str, np.ndarray], executor) -> tuple[dict[str, np.ndarray], list[int]]:
        """A v2 request's inputs as the model's token inputs, and the rows truncated."""
        names = set(inputs)
        if names == {TEXT_INPUT}:
            return await self.encode(mv, texts_from_tensor(inputs[TEXT_INPUT]), executor)
        if names == set(self.input_names):
            mv.check(inputs, None)  # names, INT64, [batch, sequence], rows: before looking at values
            self.check_tokens(inputs)
            return inputs, []
        raise ClientError(f"model {mv.name} takes texts as input {TEXT_INPUT!r} ({TEXT_DATATYPE}, one string per row, "
                          f"shape [batch] or [batch, 1]), or the token inputs {self.input_names} (INT64 [batch, "
                          f"sequence]); the request gives {sorted(names)}")

    async def encode(self, mv, texts: list[str], executor) -> tuple[dict[str, np.ndarray], list[int]]:
        check_rows(len(texts), mv.policy, mv.name)  # before tokenising a batch that cannot run
        try:
            return await self.tokeniser.encode_async(texts, executor)
        except ModelpressError as exc:  # tokenize's own checks of the texts: the client's mistake
            raise ClientError(str(exc)) from None

    def check_tokens(self, inputs: dict[str, np.ndarray]) -> None:
        """Token ids a Triton client sends: values the model can run (an id past its embedding would
        fail the whole batch inside ONNX Runtime), at most max_length tokens."""
        ids = inputs["input_ids"]
        if ids.shape[1] == 0:
            raise ClientError("input 'input_ids' has no tokens (sequence dimension 0); send at least [CLS] [SEP]")
        bad = np.argwhere((ids < 0) | (ids >= self.vocab_size))
        if len(bad):
            r, c = bad[0]
            raise ClientError(f"input_ids[{r}, {c}] is {ids[r, c]}: not a token id of this model's tokenizer "
                              f"(0 to {self.vocab_size - 1}); tokenise with the tokenizer/ folder beside model.onnx")
        width = ids.shape[1]
        mask = inputs.get("attention_mask")
        if mask is not None:
            if ((mask != 0) & (mask != 1)).any():
                raise ClientError("attention_mask must hold only 0 (padding) and 1 (a token)")
            used = np.flatnonzero(mask.any(axis=0))
            width = int(used[-1]) + 1 if len(used) else 0
        if width > self.max_length:
            raise ClientError(f"the token inputs hold {width} tokens per row; this model takes at most max_length "
                              f"{self.max_length}: truncate when tokenising, or send the texts as input "
                              f"{TEXT_INPUT!r} and the server truncates and says so")
        types = inputs.get("token_type_ids")
        if types is not None and ((types < 0) | (types >= self.segments)).any():
            raise ClientError(f"token_type_ids must be below {self.segments} (one text per row: all 0), got values "
                              f"{sorted(set(np.unique(types).tolist()))[:8]}")

    def parameters(self, truncated: list[int]) -> dict:
        return self.tokeniser.parameters(truncated)

    # -- what the version says -------------------------------------------------------------
    def metadata(self, mv, doc: dict) -> dict:
        """The v2 model metadata of a text version: one BYTES input ``text``, the outputs ``logits``
        and (with class names) ``label``; the token inputs a Triton client sends in parameters."""
        described = {**(postprocess.input_parameters(mv, TEXT_INPUT) or {}), "kind": "text",
                     "max_length": self.max_length, "token_inputs": self.input_names}
        outputs = list(doc["outputs"])
        if LABEL in postprocess.derived(mv):
            outputs.append({"name": LABEL, "datatype": TEXT_DATATYPE, "shape": [-1]})
        params = {**doc.get("parameters", {}), "token_inputs": doc["inputs"], "max_length": self.max_length}
        return {**doc, "inputs": [{"name": TEXT_INPUT, "datatype": TEXT_DATATYPE, "shape": [-1, 1],
                                   "parameters": described}], "outputs": outputs, "parameters": params}


def text_predictions(mv, merged: dict[str, np.ndarray], params: dict, truncated: list[int]) -> list[dict]:
    """Vertex predictions of a text model: always an object per instance, as image models' with
    class names (``logits``, ``label``, ``probabilities`` on request), plus ``truncated``."""
    rows = postprocess.predictions(mv, merged, params)
    scores = postprocess.scores_output(mv) or next(iter(merged))
    cut = set(truncated)
    return [{**(p if isinstance(p, dict) else {scores: p}), "truncated": i in cut} for i, p in enumerate(rows)]
