"""training: the training loop shared by train, fine-tune (prune), distil and retraining, with
early stopping (``loop``), the train step and its starting points: scratch, fine-tune from your
weights, or your model as it is (``step``); ``distributed`` spreads the loop over processes."""

from modelpress.training.loop import (OPTIMISERS, Progress, TrainSettings, check_finite, fit, make_optimiser,
                                      resolve_device, standardised_mse, target_std, task_loss, validation_scores)
from modelpress.training.step import check_start, describe, finish, prepare, train

__all__ = ["OPTIMISERS", "Progress", "TrainSettings", "check_finite", "check_start", "describe", "finish", "fit",
           "make_optimiser", "prepare", "resolve_device", "standardised_mse", "target_std", "task_loss", "train",
           "validation_scores"]
