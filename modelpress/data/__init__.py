"""data: dataset sources (built-in digits and diabetes, CSV, NPZ, image folders; local or gs://),
their content fingerprints, and the dataset artifact: deterministic stratified splits of raw
features plus ``schema.json`` (task, feature shape, classes or target statistics,
preprocessing, normalisation statistics, input description)."""

from modelpress.data.dataset import (SCHEMA_VERSION, SPLITS, Dataset, Split, dataset_task, load_dataset, make_dataset,
                                     split_indices)
from modelpress.data.preprocessing import NORMALISE_PRESETS, parse_normalise
from modelpress.data.sources import BUILTIN_SOURCES, BUILTIN_TASKS, RawData, describe_input, load_source
from modelpress.data.targets import TASKS, check_task, regression_split_indices

__all__ = ["BUILTIN_SOURCES", "BUILTIN_TASKS", "NORMALISE_PRESETS", "SCHEMA_VERSION", "SPLITS", "TASKS", "Dataset",
           "RawData", "Split", "check_task", "dataset_task", "describe_input", "load_dataset", "load_source",
           "make_dataset", "parse_normalise", "regression_split_indices", "split_indices"]
