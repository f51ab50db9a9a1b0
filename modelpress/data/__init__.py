"""data: dataset sources (built-in, CSV, NPZ, image folders; local or gs://), their content
fingerprints, and the dataset artifact: deterministic stratified splits of raw features plus
``schema.json`` (task, feature shape, classes, normalisation statistics, input description)."""

from modelpress.data.dataset import SCHEMA_VERSION, SPLITS, Dataset, Split, load_dataset, make_dataset, split_indices
from modelpress.data.sources import BUILTIN_SOURCES, RawData, describe_input, load_source

__all__ = ["BUILTIN_SOURCES", "SCHEMA_VERSION", "SPLITS", "Dataset", "RawData", "Split", "describe_input",
           "load_dataset", "load_source", "make_dataset", "split_indices"]
