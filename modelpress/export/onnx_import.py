"""Start from the user's ONNX file: check it against the dataset, put the dataset's input
normalisation in front of it, score it, and write it as the fp32 ONNX baseline artifact.

No torch here: an ONNX start skips every torch step, and this artifact is what quantise,
benchmark, select and deploy take, exactly as they take an export of a torch model.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable

import numpy as np

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import atomic_dir, local_path, write_json_atomic
from modelpress.core.results import ModelCard, StepResult
from modelpress.core.timing import timed
from modelpress.data.dataset import Dataset, lineage, load_dataset
from modelpress.data.text import is_text_dataset
from modelpress.evaluation import REGRESSION_SCORES, score_outputs
from modelpress.export import runtime

FLOAT = 1  # onnx.TensorProto.FLOAT


def _dims(value_info) -> list:
    """A graph input's or output's dims: ints where fixed, the symbol (or None) where not."""
    out = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    return out


def check_signature(model, ds: Dataset, source: str) -> None:
    """One float input shaped (batch, *features) and one output of the dataset's width, or an
    error naming both shapes and the fix."""
    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ModelpressError(f"{source} takes {len(inputs)} inputs ({[i.name for i in inputs]}); modelpress "
                              "serves models with one input tensor of features. Export it with one input.")
    x = inputs[0]
    if x.type.tensor_type.elem_type != FLOAT:
        raise ModelpressError(f"{source}: input {x.name!r} is not float32; export it with a float32 input")
    want = [-1, *ds.feature_shape]
    dims = _dims(x)
    fixed = [d if isinstance(d, int) and d > 0 else -1 for d in dims]
    # a symbolic dim (-1) takes any size: only fixed sizes must equal the dataset's
    if len(fixed) != len(want) or any(f not in (-1, w) for f, w in zip(fixed[1:], want[1:])):
        raise ModelpressError(
            f"{source}: the model's input {x.name!r} has shape {fixed} but the dataset's examples have shape "
            f"{want} (batch first). Make the dataset match the model (image_size, channels) or export the "
            "model for this input.")
    width = ds.num_outputs
    outputs = [_dims(o) for o in graph.output]
    if not outputs or len(outputs[0]) != 2 or (isinstance(outputs[0][1], int) and outputs[0][1] not in (0, width)):
        raise ModelpressError(
            f"{source}: the model's first output has shape {outputs[0] if outputs else None}; this dataset needs "
            f"[batch, {width}] ({'one value' if ds.task == 'regression' else f'{width} class logits'} per example)")


def add_normalisation(model, norm: dict | None) -> bool:
    """Prepend ``(x - mean) * inv_std`` to the graph (constants named as runtime.NORMALISATION_CONSTANTS,
    so quantisation keeps them fp32): the imported model then takes raw features like every
    model modelpress builds. Returns False when there is nothing to add (normalise: none)."""
    from onnx import helper, numpy_helper

    if not norm or _identity(norm):
        return False
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    clash = sorted(taken & {"mean", "inv_std"})
    if clash:  # quantisation keeps tensors of these names fp32: they must be the normalisation's
        raise ModelpressError(f"your ONNX graph already has tensors named {clash}, the names modelpress gives the "
                              "input normalisation it puts in front; set normalise: none (normalise inside your "
                              "model) or rename those tensors")
    x = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}][0]
    rank = len(x.type.tensor_type.shape.dim)
    shape = (1, -1, 1, 1) if norm["kind"] == "per-channel" and rank == 4 else (1, -1)
    mean = np.asarray(norm["mean"], dtype=np.float32).reshape(shape)
    inv_std = (1.0 / np.asarray(norm["std"], dtype=np.float32)).reshape(shape)
    inner = f"{x.name}__normalised"
    for node in graph.node:
        node.input[:] = [inner if name == x.name else name for name in node.input]
    graph.initializer.extend([numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(inv_std, "inv_std")])
    graph.node.insert(0, helper.make_node("Mul", [f"{x.name}__centred", "inv_std"], [inner], name="normalise_scale"))
    graph.node.insert(0, helper.make_node("Sub", [x.name, "mean"], [f"{x.name}__centred"], name="normalise_centre"))
    return True


def _identity(norm: dict) -> bool:
    return all(m == 0 for m in norm["mean"]) and all(s == 1 for s in norm["std"])


@timed
def import_onnx(onnx_path: str, dataset_dir: str, out_dir: str, *, log: Callable[[str], None] = print) -> dict:
    """Check, normalise, score and write the user's ONNX model as ``model.onnx`` + ``meta.json``."""
    import onnx
    import onnxruntime as ort

    source = str(onnx_path)
    path = local_path(onnx_path)
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if len(found) != 1:
            raise ModelpressError(f"onnx_model {source} is a folder with {len(found)} .onnx files; name the file")
        path = found[0]
    if not path.exists():
        raise ModelpressError(f"onnx_model {source} does not exist; give the path or gs:// URI of an .onnx file")
    if is_text_dataset(dataset_dir):
        raise ModelpressError(f"onnx_model {source}: an ONNX file start takes image and table datasets; a text run "
                              "starts from a Hugging Face folder (architecture hf:<folder>, epochs 0 to take it as it is)")
    ds = load_dataset(dataset_dir)
    model = runtime.load_onnx(path)
    check_signature(model, ds, source)
    t0 = time.perf_counter()
    norm = ds.schema.get("normalisation")
    norm = {k: norm[k] for k in ("kind", "mean", "std")} if norm else None  # an imported model answers in its own units
    if (ds.schema.get("preprocessing") or {}).get("normalise") == "dataset":
        log("[import-onnx] normalise: dataset puts this dataset's training-split mean/std in front of your model; "
            "set normalise: none if it takes raw features, or imagenet / {mean, std} for what it was trained on")
    with atomic_dir(local_path(out_dir)) as tmp:
        out = tmp / runtime.ONNX_FILE
        normalised = add_normalisation(model, norm)
        onnx.save_model(model, str(out))  # weights embedded: the artifact is one file like an export
        runtime.check_onnx(out)
        sess = runtime.session(out)
        input_name = sess.get_inputs()[0].name
        try:
            outputs = runtime.run_logits(sess, ds.test.x)
            runtime.run_logits(sess, ds.test.x[:1], batch_size=1)
        except Exception as exc:
            raise ModelpressError(f"{source} does not run on the dataset's test examples in ONNX Runtime "
                                  f"({str(exc)[:300]}); export it with a dynamic batch dimension") from None
        scores = score_outputs(outputs, ds.test.y, ds.task, ds.num_outputs)
        regression = ds.task == "regression"
        card = ModelCard(
            framework="onnx", accuracy=None if regression else scores["accuracy"], class_names=ds.class_names,
            task=ds.task, scores={k: scores[k] for k in REGRESSION_SCORES} if regression else {},
            architecture=f"onnx:{path.name}", input_shape=[-1, *ds.feature_shape],
            extra={"format": "onnx", "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                                                  default=None),
                   "input_name": input_name, "output_name": sess.get_outputs()[0].name,
                   "input": {"name": input_name, "datatype": "FP32", **ds.schema.get("input", {}),
                             "shape": [-1, *ds.feature_shape]},
                   "size_bytes": out.stat().st_size, "imported_from": source,
                   "imported_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "normalisation_added": normalised, "dataset": lineage(ds.schema)},
            detail={"versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__}})
        write_json_atomic(tmp / runtime.META_FILE, card.file_metadata())
    seconds = time.perf_counter() - t0
    quality = (f"RMSE {scores['rmse']:.4g}" if regression else f"accuracy {scores['accuracy']:.4f}")
    log(f"[import-onnx] {source}: input {input_name!r} {[-1, *ds.feature_shape]}, "
        f"{'dataset normalisation added in front' if normalised else 'no normalisation added'}, "
        f"ONNX Runtime test {quality}, {seconds:.1f}s")
    metrics = {"size_bytes": card.extra["size_bytes"], "import_seconds": seconds,
               **({f"test_{k}": scores[k] for k in REGRESSION_SCORES} if regression
                  else {"test_accuracy": scores["accuracy"]})}
    return StepResult(card, metrics).as_dict()
