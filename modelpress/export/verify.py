"""Numerical verification of an exported ONNX model against the torch model it came from.

The exporter can translate an op inexactly without failing; comparing outputs on real inputs
(the test split) is what catches it before a quantiser or a server inherits the drift. The
outputs are class logits or a regression value in the target's units: the tolerance is
``atol + rtol * |torch|`` either way, so a large-valued target is held to the relative part.
"""

from __future__ import annotations

import numpy as np
import torch

from modelpress.core.errors import ModelpressError
from modelpress.export import runtime


def against_torch(model: torch.nn.Module, sess, x: np.ndarray, *, rtol: float, atol: float) -> dict:
    """ONNX Runtime's outputs against torch's on `x` (batched and one at a time); raise where
    any differs beyond ``atol + rtol * |torch|``, or the shapes differ. Returns the largest
    differences seen, for the model card."""
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = runtime.run_logits(sess, x)
    single = runtime.run_logits(sess, x[:1], batch_size=1)  # the dynamic batch must take 1 too
    if got.shape != ref.shape or single.shape != ref[:1].shape:
        raise ModelpressError(f"the ONNX model's outputs have shape {list(got.shape)} (batch 1: "
                              f"{list(single.shape)}) but torch's have {list(ref.shape)}; the export lost a "
                              "dimension. Export again, or check the model's forward for batch-dependent code.")
    single_diff = np.abs(single - ref[:1])
    abs_diff = np.abs(got - ref)
    max_abs = float(max(abs_diff.max(), single_diff.max()))
    max_rel = float((abs_diff / (np.abs(ref) + 1e-12)).max())
    if (abs_diff > atol + rtol * np.abs(ref)).any() or (single_diff > atol + rtol * np.abs(ref[:1])).any():
        raise ModelpressError(
            f"ONNX output differs from torch beyond tolerance (rtol {rtol}, atol {atol}): "
            f"max abs diff {max_abs:.3g}, max rel diff {max_rel:.3g} on {len(x)} test inputs. "
            "The model may use an op the exporter translates inexactly.")
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "verify_samples": len(x)}
