"""batch: offline (batch) prediction over files, streamed in chunks.

Instances come from a CSV, JSONL or NPZ file or an image folder (local or gs://), a chunk at a
time (``sources``, ``arrays``); the model is a repository's deployed champion, a given version
or an ONNX model folder, scored with ONNX Runtime and answered by the server's own rules
(``model``); predictions and errors are appended to temporary files renamed into place at the
end (``writers``); ``predict`` runs the job and returns its summary.
"""

from modelpress.batch.model import BatchModel, resolve_model
from modelpress.batch.predict import BatchSettings, predict, step_result
from modelpress.batch.writers import ERRORS_FILE, FORMATS, SUMMARY_FILE, predictions_file

__all__ = ["ERRORS_FILE", "FORMATS", "SUMMARY_FILE", "BatchModel", "BatchSettings", "predict", "predictions_file",
           "resolve_model", "step_result"]
