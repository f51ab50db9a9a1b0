"""Export a torch model artifact to ONNX (checked, verified against torch by `verify`), with its card.

Any model a spec builds exports the same way (built-in, torchvision, timm, the user's own
module): torch.export (dynamo) with a dynamic batch dimension, scored by the dataset's task.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from typing import Callable

import torch

from modelpress.models import flops as flops_mod
from modelpress import models
from modelpress.export import runtime, verify
from modelpress.data.dataset import load_dataset
from modelpress.core.errors import ModelpressError
from modelpress.core.timing import timed
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.core.results import ModelCard, StepResult
from modelpress.evaluation import REGRESSION_SCORES, score_outputs

OPSET = 18  # the torch exporter's own op library targets 18: no version conversion
INPUT_NAME = "input"
OUTPUT_NAME = "logits"  # the one output (class logits, or the regression value), as serving names it


def export_model(model: torch.nn.Module, example: torch.Tensor, path: str, opset: int = OPSET) -> None:
    """Dynamo export with a dynamic batch dimension and embedded weights."""
    if len(example) < 2:  # torch.export specialises batch sizes 0 and 1
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    buf = io.StringIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about torchvision ops this project never uses
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():  # it narrates each stage
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (example,), path, dynamo=True, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    except Exception as exc:
        raise ModelpressError(f"ONNX export failed for {type(model).__name__}: "
                              f"{type(exc).__name__}: {str(exc)[:500]}") from None
    finally:
        quiet.setLevel(level)


def input_description(schema: dict, spec: dict) -> dict:
    """What a client sends the exported model (the dataset's raw features), for meta.json and serving."""
    info = {"name": INPUT_NAME, "datatype": "FP32", **schema.get("input", {}),
            "shape": [-1, *schema["feature_shape"]]}
    if not spec.get("normalisation"):
        info["preprocessing"] = "normalise as the dataset's schema.json says before sending"
    return info


@timed
def export_onnx(model_dir: str, dataset_dir: str, out_dir: str, *, opset: int = OPSET,
                rtol: float = 1e-3, atol: float = 1e-4, verify_samples: int = 256,
                log: Callable[[str], None] = print) -> dict:
    """Export, check and verify; write ``model.onnx`` + ``meta.json`` to ``out_dir``."""
    import onnx
    import onnxruntime as ort

    if models.read_spec(model_dir).get("format") == "hf-text":
        from modelpress.export.text_artifact import export_text_step

        return export_text_step(model_dir, dataset_dir, out_dir, opset=opset, rtol=rtol, atol=atol, log=log)
    model, spec = models.load_model(model_dir)
    ds = load_dataset(dataset_dir)
    t0 = time.perf_counter()
    with atomic_dir(local_path(out_dir)) as tmp:
        path = tmp / runtime.ONNX_FILE
        export_model(model, torch.from_numpy(ds.test.x[:2]), str(path), opset)
        runtime.check_onnx(path)
        sess = runtime.session(path)
        checked = verify.against_torch(model, sess, ds.test.x[:max(2, verify_samples)], rtol=rtol, atol=atol)
        test = score_outputs(runtime.run_logits(sess, ds.test.x), ds.test.y, ds.task, ds.num_outputs)
        regression = ds.task == "regression"
        scores = {k: test[k] for k in REGRESSION_SCORES} if regression else {}
        card = ModelCard(
            framework="onnx", accuracy=None if regression else test["accuracy"], class_names=ds.class_names,
            task=ds.task, scores=scores, architecture=spec["architecture"], params=models.count_params(model),
            flops=flops_mod.forward_flops(model, ds.feature_shape), input_shape=[-1, *ds.feature_shape],
            extra={"format": "onnx", "opset": opset, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
                   "input": input_description(ds.schema, spec), **checked, "size_bytes": path.stat().st_size,
                   # the torch weights this came from: what a retraining run warm-starts from
                   "source_model": str(local_path(model_dir))},
            detail={"source_spec": spec, "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                                                      "onnxruntime": ort.__version__}})
        write_json_atomic(tmp / runtime.META_FILE, card.file_metadata())
    seconds = time.perf_counter() - t0
    size = card.extra["size_bytes"]
    quality = (f"RMSE {test['rmse']:.4g}" if regression else f"accuracy {test['accuracy']:.4f}")
    log(f"[export-onnx] opset {opset}, {size / 1e6:.2f} MB, max abs diff {checked['max_abs_diff']:.2e}, "
        f"ONNX Runtime test {quality}, {seconds:.1f}s")
    scored = {f"test_{k}": v for k, v in scores.items()} if regression else {"test_accuracy": test["accuracy"]}
    metrics = {**scored, "max_abs_diff": checked["max_abs_diff"],
               "max_rel_diff": checked["max_rel_diff"], "size_bytes": size, "opset": opset,
               "export_seconds": seconds}
    return StepResult(card, metrics).as_dict()
