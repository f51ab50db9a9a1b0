"""The recipe: which compression steps an optimise run applies, and the start it runs from.

The pipeline's graph is the same for every recipe; a step the recipe leaves out writes a
skipped output (core.results.write_skipped) that later steps pass over, so one compiled
pipeline serves "only quantise my model" as well as the full prune + distil + quantise.
"""

from __future__ import annotations

import difflib

from modelpress.core.errors import ModelpressError

STEPS = ("prune", "distil", "quantise", "qat")
NO_ONNX = ("", "none")  # onnx_model values that mean "start from a torch model"


def check_steps(steps) -> list[str]:
    if not isinstance(steps, (list, tuple)):
        raise ModelpressError(f"steps is a list of compression steps, e.g. [quantise], from {list(STEPS)}; "
                              f"got {steps!r}")
    for step in steps:
        if step not in STEPS:
            close = difflib.get_close_matches(str(step), STEPS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ModelpressError(f"steps: {step!r} is not a compression step{hint}; choose any of {list(STEPS)} "
                                  "([] measures and deploys the baseline alone)")
    if len(set(steps)) != len(steps):
        raise ModelpressError(f"steps lists a step twice: {list(steps)}")
    return list(steps)


def onnx_start(onnx_model: str) -> bool:
    return str(onnx_model or "").strip().lower() not in NO_ONNX


def check_start(*, epochs: int, weights: str, replace_head: bool, onnx_model: str, steps) -> None:
    """The starting point's settings fit together: scratch, fine-tune, as-is, or an ONNX file."""
    if onnx_start(onnx_model):
        if weights:
            raise ModelpressError("onnx_model and weights are two different starts: an ONNX file is the "
                                  "baseline as it is; set one of them")
        torch_only = [s for s in steps if s in ("prune", "distil", "qat")]
        if torch_only:
            raise ModelpressError(f"steps {torch_only} need a torch model, but the run starts from the ONNX file "
                                  f"{onnx_model}; set steps: [quantise] (or []), or start from torch weights")
        return
    from modelpress.training import TrainSettings, check_start as check_torch_start

    check_torch_start(TrainSettings(epochs=epochs), weights, replace_head)  # the one rule for torch starts


def skip_reason(step: str, steps, *inputs_skipped: dict | None) -> str | None:
    """Why `step` does not run (not in the recipe, or an input was skipped), or None: it runs."""
    if step in STEPS and step not in steps:
        return f"not in the recipe (steps: {list(steps)})"
    for note in inputs_skipped:
        if note:
            return f"its input was skipped ({note.get('step')}: {note.get('reason')})"
    return None
