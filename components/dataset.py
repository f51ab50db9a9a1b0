from kfp import dsl
from kfp.dsl import Dataset, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def make_dataset(
    dataset: Output[Dataset],
    source: str = "digits",
    label_column: str = "label",
    image_size: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
):
    """Load a source (digits, .csv, .npz, image folder) and write stratified splits."""
    from modelpress import data

    schema = data.make_dataset(source, dataset.path, label_column=label_column, image_size=image_size,
                               val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    dataset.metadata.update({k: schema[k] for k in ("source", "task", "feature_shape", "num_classes",
                                                     "class_names", "splits", "seed")})
