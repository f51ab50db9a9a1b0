from kfp import dsl
from kfp.dsl import Dataset, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def make_dataset(
    dataset: Output[Dataset],
    source: str = "digits",
    label_column: str = "label",
    image_size: int = 0,
    channels: int = 0,
    normalise: str = "dataset",
    task: str = "auto",
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    source_fingerprint: str = "",
    text_column: str = "",
    tokenizer: str = "",
    vocab_size: int = 8000,
    max_length: int = 128,
):
    """Load a source (digits, diabetes, .csv, .npz, image folder, texts) and write deterministic splits.

    Args:
        source: digits, diabetes, a .csv or .npz file, a folder of class sub-folders, or (with text_column)
            a .csv/.jsonl of texts; local or gs://.
        label_column: The CSV column holding the labels (class names, or numbers for regression).
        image_size: Resize images to this square size (0: keep their size).
        channels: Image channels the model takes: 3 turns grey images into RGB, 1 RGB into grey (0: keep).
        normalise: The input normalisation the model applies inside its graph: dataset (training-split
            mean/std), imagenet, none, or a JSON mapping {"mean": [...], "std": [...]} in raw units.
        task: auto (decided from the label column, and logged), classification or regression.
        val_fraction: Share of the examples in the validation split.
        test_fraction: Share of the examples in the test split.
        seed: Seed of the stratified split.
        source_fingerprint: The content fingerprint of `source`, and of `tokenizer` where set (run_local.py and
            submit.py fill it in): part of this step's cache key, so changed data reruns the step.
        text_column: The column (CSV) or key (JSONL) holding the texts; set, the source is a text dataset
            ("": numbers or images).
        tokenizer: Text: the tokenizer to use, a folder with tokenizer.json (save_pretrained's) or the file;
            "" trains a WordPiece tokenizer on the training split.
        vocab_size: Text: the vocabulary size of a trained tokenizer.
        max_length: Text: the most tokens per text ([CLS] and [SEP] included); longer texts are truncated.

    Returns:
        dataset: The dataset artifact: train/validation/test splits of raw features (text: token ids, the raw
            texts and tokenizer/) + schema.json.
    """
    from modelpress import data
    from modelpress.data import fingerprint

    computed, line = fingerprint.check(source, source_fingerprint, tokenizer)
    print(line, flush=True)
    schema = data.make_dataset(source, dataset.path, label_column=label_column, image_size=image_size,
                               channels=channels, task=task, normalise=normalise,  # a JSON string is read too
                               val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                               text_column=text_column, tokenizer=tokenizer, vocab_size=vocab_size,
                               max_length=max_length)
    dataset.metadata.update({k: schema[k] for k in ("source", "task", "input_kind", "feature_shape", "num_classes",
                                                     "num_outputs", "class_names", "target", "preprocessing", "splits",
                                                     "seed", "max_length", "vocab_size", "token_lengths")
                             if k in schema})
    dataset.metadata["fingerprint"] = computed
