"""evaluation: scoring a model on a dataset split, the same way for torch and ONNX models.

`scoring` (accuracy/loss/confusion matrix for classification, RMSE/MAE/R² for regression,
from the outputs of any runtime) needs numpy only, so ONNX steps score without importing
torch; `torch_scoring` runs a torch model to its outputs.
"""

from modelpress.evaluation.scoring import (QUALITY, REGRESSION_SCORES, TASKS, QualityMetric, confusion_matrix,
                                           cross_entropy, quality_metric, score_logits, score_outputs,
                                           score_regression)

__all__ = ["QUALITY", "REGRESSION_SCORES", "TASKS", "QualityMetric", "confusion_matrix", "cross_entropy",
           "quality_metric", "score_logits", "score_outputs", "score_regression"]
