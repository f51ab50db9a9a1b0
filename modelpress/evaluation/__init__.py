"""evaluation: scoring a model on a dataset split, the same way for torch and ONNX models.

`scoring` (accuracy, loss, confusion matrix from logits of any runtime) needs numpy only, so
ONNX steps score without importing torch; `torch_scoring` runs a torch model to its logits.
"""

from modelpress.evaluation.scoring import confusion_matrix, cross_entropy, score_logits

__all__ = ["confusion_matrix", "cross_entropy", "score_logits"]
