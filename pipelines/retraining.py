"""retraining: train a challenger on a dataset URI, score it beside the champion, deploy only if blessed.

dataset (source URI) -> train-challenger (optionally warm-started from the champion's weights)
        -> export-onnx -> score-challenger (challenger and champion, same test split)
        -> select (the blessing rule) -> If(blessed) -> deploy (local repository | Vertex endpoint)

The champion is the latest version in `repository` (locally a folder, on Vertex a gs:// path
the Vertex deploy step records every deployed version in).
"""

from kfp import dsl

from components.dataset import make_dataset
from components.export_onnx import export_onnx
from components.score_challenger import score_challenger
from components.select import select
from components.train_challenger import train_challenger
from pipelines.targets import Target


def build(target: Target):
    @dsl.pipeline(name="retraining", description="Retrain on new data, score the challenger against the "
                                                  "champion on the same test split, deploy only if blessed.")
    def retraining(
        source: str = "digits",
        source_fingerprint: str = "",
        label_column: str = "label",
        text_column: str = "",
        tokenizer: str = "",
        vocab_size: int = 8000,
        max_length: int = 128,
        image_size: int = 0,
        channels: int = 0,
        normalise: str = "dataset",
        task: str = "auto",
        seed: int = 0,
        warm_start: str = "",
        architecture: str = "cnn",
        model_args: dict = {"channels": [32, 64]},
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 2e-3,
        patience: int = 5,
        tolerance: float = 0.01,
        tolerance_mode: str = "absolute",
        accuracy_floor: float = 0.9,
        rmse_ceiling: float = 0.0,
        threads: int = 2,
        window_seconds: float = 0.2,
        max_windows: int = 5,
        repository: str = "model_repository",
        model_name: str = "digits",
    ):
        t = target.apply
        # Not cached: a scheduled run reads the same URI after its content was refreshed, and
        # warm_start="champion" depends on what is deployed now.
        data_task = t(make_dataset(source=source, source_fingerprint=source_fingerprint, label_column=label_column,
                                   text_column=text_column, tokenizer=tokenizer, vocab_size=vocab_size,
                                   max_length=max_length, image_size=image_size, channels=channels,
                                   normalise=normalise, task=task, seed=seed), cache=False)
        ds = data_task.outputs["dataset"]
        train_task = t(train_challenger(dataset=ds, warm_start=warm_start, repository=repository,
                                        model_name=model_name, architecture=architecture,
                                        model_args=model_args, epochs=epochs, batch_size=batch_size,
                                        learning_rate=learning_rate, seed=seed, patience=patience), cache=False)
        export_task = t(export_onnx(model=train_task.outputs["model"], dataset=ds))
        # Never cached: the champion may have changed since the last run.
        score_task = t(score_challenger(dataset=ds, torch_model=train_task.outputs["model"],
                                        onnx_model=export_task.outputs["onnx_model"], repository=repository,
                                        model_name=model_name, threads=threads, window_seconds=window_seconds,
                                        max_windows=max_windows), cache=False)
        sel = t(select(results=score_task.outputs["results"], tolerance=tolerance, tolerance_mode=tolerance_mode,
                       accuracy_floor=accuracy_floor, rmse_ceiling=rmse_ceiling), cache=False)
        with dsl.If(sel.outputs["Output"] == True, name="blessed"):  # noqa: E712 (a KFP condition, not Python)
            target.deploy(model=sel.outputs["chosen"], repository=repository, model_name=model_name)

    return retraining
