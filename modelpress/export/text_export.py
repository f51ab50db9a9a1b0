"""ONNX export of a text classifier (dynamic batch and sequence axes), verified against torch,
and ONNX Runtime's transformer graph optimiser (attention / LayerNorm / GELU fusion).

The exporter: with torch 2.13 and transformers 5 both of torch's exporters export BERT with
dynamic batch and sequence axes and match torch; but only the TorchScript exporter's graph
(with eager attention) has the shape ONNX Runtime's fusions recognise -- from the dynamo
graph they fuse LayerNorm and GELU and no attention -- and it exports a tiny BERT in under a
second where dynamo takes about ten. So "torchscript" is the default, "dynamo" the alternative.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.export import runtime
from modelpress.models.text import TEXT_INPUTS, model_inputs

OPSET = 18
OUTPUT_NAME = "logits"
EXPORTERS = ("torchscript", "dynamo")
VERIFY_SHAPES = ((1, 7), (3, 7), (1, None), (3, None))  # (batch, length); None = max_length
_SEED = 1234


class _Logits(nn.Module):
    """The classifier with named tensor inputs and the logits tensor as its one output."""

    def __init__(self, model: nn.Module, inputs: list[str]):
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, *tensors):
        return self.model(**dict(zip(self.inputs, tensors))).logits


def token_batch(model: nn.Module, batch: int, length: int, seed: int = _SEED) -> dict[str, np.ndarray]:
    """Random int64 token ids for ``model``'s inputs; every row but the first padded at its end, so
    both the masked and the unmasked path are exercised."""
    rng = np.random.default_rng(seed + 31 * batch + length)
    config = model.config
    ids = rng.integers(1, int(config.vocab_size), size=(batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch):
        keep = int(rng.integers(1, length + 1))
        mask[row, keep:] = 0
        ids[row, keep:] = int(getattr(config, "pad_token_id", 0) or 0)
    types = max(1, int(getattr(config, "type_vocab_size", 1)))
    arrays = {"input_ids": ids, "attention_mask": mask,
              "token_type_ids": rng.integers(0, types, size=(batch, length), dtype=np.int64)}
    return {k: arrays[k] for k in model_inputs(model)}


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Eager attention while exporting: the same numbers as SDPA, in the graph pattern ONNX Runtime
    fuses into its Attention op; the model's own setting is restored afterwards."""
    before = getattr(model.config, "_attn_implementation", None)
    switch = getattr(model, "set_attn_implementation", None)
    if switch is None or before in (None, "eager"):
        yield
        return
    switch("eager")
    try:
        yield
    finally:
        switch(before)


def export_text_onnx(model: nn.Module, out_path: str, *, max_length: int, opset: int = OPSET,
                     exporter: str = "torchscript", rtol: float = 1e-3, atol: float = 1e-4) -> dict:
    """Export to ``out_path`` (a .onnx file, written whole or not at all) with int64 inputs
    (those of input_ids / attention_mask / token_type_ids the model takes), dynamic batch and
    sequence axes and the output ``logits``; verify it against torch at batch 1 and 3, lengths
    7 and ``max_length``. Returns the export settings and the largest differences seen."""
    if exporter not in EXPORTERS:
        raise ModelpressError(f"exporter must be one of {EXPORTERS}; got {exporter!r}")
    positions = getattr(model.config, "max_position_embeddings", max_length)
    if not 2 <= int(max_length) <= positions:
        raise ModelpressError(f"max_length {max_length} must be 2 to {positions} (the model's position "
                              "embeddings)")
    inputs = model_inputs(model)
    if "input_ids" not in inputs:
        raise ModelpressError(f"{type(model).__name__}.forward takes none of {list(TEXT_INPUTS)}: not a text "
                              "classifier this exporter knows")
    model = model.eval()
    wrapper = _Logits(model, inputs).eval()
    # batch 2 with padding: export specialises batch 1, and a mask of all ones may be traced away
    example = tuple(torch.from_numpy(a) for a in token_batch(model, 2, min(16, int(max_length))).values())
    out = local_path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with eager_attention(model):
            _export(wrapper, example, tmp, inputs, int(max_length), opset, exporter)
        checked = verify_text(model, tmp, max_length=int(max_length), rtol=rtol, atol=atol)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return {"exporter": exporter, "opset": opset, "inputs": inputs, "output": OUTPUT_NAME,
            "max_length": int(max_length), "size_bytes": out.stat().st_size, **checked}


def _export(wrapper, example, path, inputs, max_length, opset, exporter) -> None:
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        # both exporters narrate; the TorchScript one warns of its deprecation and of traced constants
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":  # the wrapper takes *tensors: one dynamic_shapes entry holding all of them
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                seq = torch.export.Dim("sequence", min=1, max=max_length)
                torch.onnx.export(wrapper, example, path, dynamo=True, opset_version=opset, input_names=inputs,
                                  output_names=[OUTPUT_NAME],
                                  dynamic_shapes=(tuple({0: batch, 1: seq} for _ in inputs),),
                                  external_data=False, verbose=False)
            else:
                axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
                torch.onnx.export(wrapper, example, path, dynamo=False, opset_version=opset, input_names=inputs,
                                  output_names=[OUTPUT_NAME], dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}},
                                  do_constant_folding=True)
    except ModelpressError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any exporter failure is reported with the model named
        text = str(exc)
        if "## Exception summary" in text:  # torch.export's own advice comes first; the cause after it
            text = text[text.find("## Exception summary"):]
        raise ModelpressError(f"ONNX export ({exporter}) failed for {type(wrapper.model).__name__}: "
                              f"{type(exc).__name__}: {text[:500]}; try exporter="
                              f"{'dynamo' if exporter == 'torchscript' else 'torchscript'!r}") from None
    finally:
        quiet.setLevel(level)


def _session(path):
    return runtime.session(path, threads=1)  # tiny verification batches: threads cost more than they save


def _compare(ref: np.ndarray, got: np.ndarray, rtol: float, atol: float, what: str, shape) -> tuple[float, float]:
    if got.shape != ref.shape:
        raise ModelpressError(f"{what} gives logits of shape {list(got.shape)} for batch x length {list(shape)}, "
                              f"the reference {list(ref.shape)}; the export fixed a dimension it should not have")
    diff = np.abs(got - ref)
    if (diff > atol + rtol * np.abs(ref)).any():
        raise ModelpressError(f"{what} differs beyond tolerance (rtol {rtol}, atol {atol}) at batch x length "
                              f"{list(shape)}: max abs diff {diff.max():.3g}. An op was translated inexactly; "
                              "try the other exporter, or a newer opset")
    return float(diff.max()), float((diff / (np.abs(ref) + 1e-12)).max())


def verify_text(model: nn.Module, onnx_path, *, max_length: int, rtol: float = 1e-3, atol: float = 1e-4) -> dict:
    """ONNX Runtime against torch on token batches of batch 1 and 3, lengths 7 and ``max_length``
    (padded rows included); raise beyond ``atol + rtol * |torch|``."""
    sess = _session(onnx_path)
    worst = [0.0, 0.0]
    shapes = sorted({(b, min(length or max_length, max_length)) for b, length in VERIFY_SHAPES})
    for batch, length in shapes:
        feed = token_batch(model, batch, length)
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        got = sess.run([OUTPUT_NAME], feed)[0]
        worst = [max(w, d) for w, d in zip(worst, _compare(ref, got, rtol, atol, "the ONNX model", (batch, length)))]
    return {"max_abs_diff": worst[0], "max_rel_diff": worst[1], "verify_shapes": [list(s) for s in shapes]}


def optimise_transformer(onnx_path: str, out_path: str, *, num_heads: int, hidden_size: int, opt_level: int = 0,
                         max_length: int = 64, rtol: float = 1e-3, atol: float = 1e-4) -> dict:
    """ONNX Runtime's BERT graph optimiser: fuse attention, embedding + LayerNorm and GELU (not the
    residual Add + LayerNorm: see runtime.DISABLED_OPTIMIZERS); verify the fused graph against the unfused one on token batches; return
    ``get_fused_operator_statistics()``.

    ``opt_level`` 0 applies the fusions only, so the file stays portable across execution
    providers (ONNX Runtime applies its own graph optimisations when it loads a session).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if (num_heads, hidden_size) != (0, 0) and (num_heads < 1 or hidden_size % num_heads):
        raise ModelpressError(f"hidden_size {hidden_size} must be a positive multiple of num_heads {num_heads} "
                              "(read both from the model's config; 0 and 0 let the optimiser read them from the graph)")
    src = local_path(onnx_path)
    if src.is_dir():
        src = src / "model.onnx"
    if not src.exists():
        raise ModelpressError(f"no ONNX model at {onnx_path}; export one with export_text_onnx")
    options = FusionOptions("bert")
    # SkipLayerNormalization is slower on the CPU than what it fuses (runtime.DISABLED_OPTIMIZERS)
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimised = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                       opt_level=opt_level, use_gpu=False, optimization_options=options)
    except Exception as exc:  # noqa: BLE001 -- the optimiser raises whatever its passes raise
        raise ModelpressError(f"ONNX Runtime's transformer optimiser failed on {src}: {type(exc).__name__}: "
                              f"{str(exc)[:400]}") from None
    stats = dict(optimised.get_fused_operator_statistics())
    out = local_path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        optimised.save_model_to_file(tmp)
        _match_unfused(src, tmp, max_length, rtol, atol)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return stats


def _match_unfused(src: Path, fused: str, max_length: int, rtol: float, atol: float) -> None:
    """The fused graph against the graph it came from (no torch model needed) on padded token batches."""
    before, after = _session(src), _session(fused)
    names = [i.name for i in before.get_inputs()]
    vocab, positions = _embedding_rows(src)
    rng = np.random.default_rng(_SEED)
    for batch, length in sorted({(1, min(7, positions)), (3, min(max_length, positions))}):
        ids = rng.integers(1, vocab, size=(batch, length), dtype=np.int64)
        mask = np.ones_like(ids)
        mask[1:, max(1, length // 2):] = 0
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feed = {n: feed[n] for n in names}
        _compare(before.run([OUTPUT_NAME], feed)[0], after.run([OUTPUT_NAME], feed)[0], rtol, atol,
                 "the fused graph", (batch, length))


def _embedding_rows(path: Path) -> tuple[int, int]:
    """(vocabulary size, position embeddings) read from the graph's embedding tables, so the check
    feeds only ids and lengths the model has rows for; (100, 64) where the tables are not named so."""
    import onnx

    vocab, positions = 100, 64
    for init in onnx.load(str(path), load_external_data=False).graph.initializer:
        if init.name.endswith("word_embeddings.weight") and init.dims:
            vocab = int(init.dims[0])
        elif init.name.endswith("position_embeddings.weight") and init.dims:
            positions = int(init.dims[0])
    return max(2, vocab), positions
