"""Running an exported text classifier in ONNX Runtime: which token inputs its graph takes,
token batches it has embedding rows for, and its logits and scores on a text split."""

from __future__ import annotations

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.data.token_batches import TOKEN_INPUTS, labels_of, token_arrays, trim_batch
from modelpress.evaluation import score_outputs
from modelpress.export import runtime

OUTPUT_NAME = "logits"


def graph_inputs(path) -> list[str]:
    """The token inputs an exported graph takes (DistilBERT-style models have no token_type_ids)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in init]
    unknown = [n for n in names if n not in TOKEN_INPUTS]
    if "input_ids" not in names or unknown:
        raise ModelpressError(f"{path} takes inputs {names}, not a text classifier's {list(TOKEN_INPUTS)}; "
                              "export it with modelpress.export.text_export.export_text_onnx")
    return names


def synthetic_batch(path, names: list[str], rows: int = 3, length: int = 12) -> dict[str, np.ndarray]:
    """Token ids the graph has embedding rows for, the later rows padded, where no data is given."""
    import onnx

    vocab, positions = 100, length
    for init in onnx.load(str(path), load_external_data=False).graph.initializer:
        if init.name.endswith("word_embeddings.weight") and init.dims:
            vocab = int(init.dims[0])
        elif init.name.endswith("position_embeddings.weight") and init.dims:
            positions = int(init.dims[0])
    length = max(2, min(length, positions))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, max(2, vocab), size=(rows, length), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1:, length // 2:] = 0
    ids[mask == 0] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: feed[n] for n in names}


def predict_text_onnx(onnx_path: str, split, *, batch_size: int = 32, threads: int | None = None,
                      providers: list[str] | None = None) -> np.ndarray:
    """float32 logits of every row of ``split`` (in order), batch by batch, each batch cut to its
    longest row, feeding only the inputs the graph takes."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ModelpressError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    source = runtime.onnx_file(onnx_path)
    names = graph_inputs(source)
    arrays = token_arrays(split, "split")
    sess = runtime.session(source, threads=threads, providers=providers)
    n = len(arrays["input_ids"])
    out = [sess.run([OUTPUT_NAME], trim_batch(arrays, np.arange(i, min(n, i + batch_size)), names))[0]
           for i in range(0, n, batch_size)]
    return np.concatenate(out).astype(np.float32)


def score_text_onnx(onnx_path: str, split, *, batch_size: int = 32, threads: int | None = None,
                    providers: list[str] | None = None) -> dict:
    """Accuracy, loss and confusion matrix of the ONNX text classifier on a text split (its ``y``)."""
    y = labels_of(split, len(token_arrays(split, "split")["input_ids"]), "split")
    logits = predict_text_onnx(onnx_path, split, batch_size=batch_size, threads=threads, providers=providers)
    scores = score_outputs(logits, y, "classification", logits.shape[1])
    return {**scores, "rows": int(len(y))}
