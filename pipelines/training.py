"""training: dataset -> train -> export-onnx."""

from kfp import dsl

from components.dataset import make_dataset
from components.export_onnx import export_onnx
from pipelines.targets import Target


def build(target: Target):
    @dsl.pipeline(name="training", description="Train a PyTorch model and export it to ONNX.")
    def training(
        source: str = "digits",
        source_fingerprint: str = "",
        label_column: str = "label",
        text_column: str = "",
        tokenizer: str = "",
        vocab_size: int = 8000,
        max_length: int = 128,
        image_size: int = 0,
        seed: int = 0,
        architecture: str = "cnn",
        model_args: dict = {"channels": [16, 32]},
        epochs: int = 20,
        batch_size: int = 64,
        learning_rate: float = 2e-3,
        optimizer: str = "adamw",
        weight_decay: float = 1e-4,
        patience: int = 5,
        device: str = "auto",
    ):
        data_task = target.apply(make_dataset(source=source, source_fingerprint=source_fingerprint,
                                              label_column=label_column, text_column=text_column,
                                              tokenizer=tokenizer, vocab_size=vocab_size, max_length=max_length,
                                              image_size=image_size, seed=seed))
        # local: the train component; vertex: distributed-train as a custom job over worker pools
        train_task = target.train(
            dataset=data_task.outputs["dataset"], architecture=architecture, model_args=model_args,
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer,
            weight_decay=weight_decay, seed=seed, patience=patience, device=device)
        target.apply(export_onnx(model=train_task.outputs["model"],
                                 dataset=data_task.outputs["dataset"]))

    return training
