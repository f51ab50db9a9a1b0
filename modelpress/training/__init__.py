"""training: the training loop shared by train, fine-tune (prune), distil and retraining, with
early stopping and the train step's result; ``distributed`` spreads it over processes."""

from modelpress.training.loop import (OPTIMISERS, Progress, TrainSettings, check_finite, describe, finish, fit,
                                      make_optimiser, prepare, resolve_device, train)

__all__ = ["OPTIMISERS", "Progress", "TrainSettings", "check_finite", "describe", "finish", "fit",
           "make_optimiser", "prepare", "resolve_device", "train"]
