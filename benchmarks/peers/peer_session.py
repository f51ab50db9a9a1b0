"""The ONNX Runtime session every peer server runs: the options modelpress's own sessions use
(modelpress.export.runtime.session), rebuilt here because the peers' venv has no modelpress."""

from __future__ import annotations


def session(onnx: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # the optimiser modelpress turns off (modelpress.export.runtime.DISABLED_OPTIMIZERS)
    return ort.InferenceSession(onnx, sess_options=opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["SkipLayerNormFusion"])
