"""optimise: train, compress, measure every variant, pick the fastest within tolerance, gate, deploy.

dataset -> train -> {structured prune, distil} -> export-onnx (x3)
        -> ParallelFor(quantisation methods): quantise each fp32 ONNX model
   train -> qat (quantisation-aware training, straight to an int8 ONNX model)
        -> benchmark (with the deployed champion) -> select -> If(blessed) -> deploy
        -> If(tune_serving, local target) -> tune-serving (the served config, measured)
   select -> If(edge_export) -> export-edge (ORT format + required-operators config, measured vs .onnx)

Starting points (parameters): train from scratch; fine-tune your `weights`; take them as they
are (`epochs: 0`); or start from an ONNX file (`onnx_model`, brought in with dsl.importer: the
torch steps are skipped and the file is the baseline). `steps` is the recipe: the compression
steps it leaves out write skip notes, so the graph is the same for every recipe and target.
"""

from kfp import dsl

from components.benchmark import benchmark
from components.dataset import make_dataset
from components.distil import distil
from components.export_edge import export_edge
from components.export_onnx import export_onnx
from components.prune import prune
from components.qat import qat
from components.quantise import quantise
from components.select import select
from components.train import train
from components.tune_serving import tune_serving as tune_serving_op
from pipelines.targets import Target


def build(target: Target):
    @dsl.pipeline(name="optimise", description="Train, compress, benchmark, select and deploy the "
                                                "fastest model within the accuracy tolerance.")
    def optimise(
        source: str = "digits",
        source_fingerprint: str = "",
        start_fingerprint: str = "",
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
        architecture: str = "cnn",
        model_args: dict = {"channels": [32, 64]},
        code_dir: str = "",
        weights: str = "",
        replace_head: bool = False,
        onnx_model: str = "none",
        steps: list = ["prune", "distil", "quantise"],
        epochs: int = 20,
        batch_size: int = 64,
        learning_rate: float = 2e-3,
        prune_amount: float = 0.5,
        prune_finetune_epochs: int = 10,
        student_architecture: str = "cnn",
        student_args: dict = {"channels": [16, 32]},
        distil_epochs: int = 20,
        temperature: float = 4.0,
        alpha: float = 0.9,
        quantisation_methods: list = ["static-int8", "dynamic-int8"],
        calibration_samples: int = 256,
        qat_epochs: int = 3,
        qat_learning_rate: float = 1e-4,
        qat_per_channel: bool = True,
        threads: int = 2,
        window_seconds: float = 0.5,
        max_windows: int = 10,
        tolerance: float = 0.01,
        tolerance_mode: str = "absolute",
        p95_budget_ms: float = 0.0,
        size_budget_bytes: int = 0,
        objective: str = "p50",
        accuracy_floor: float = 0.9,
        rmse_ceiling: float = 0.0,
        repository: str = "model_repository",
        model_name: str = "digits",
        tune_serving: bool = False,
        tune_concurrency: int = 16,
        tune_p99_budget_ms: float = 0.0,
        tune_search: str = "quick",
        edge_export: bool = False,
        edge_target_platform: str = "",
    ):
        t = target.apply
        data_task = t(make_dataset(source=source, source_fingerprint=source_fingerprint, label_column=label_column,
                                   text_column=text_column, tokenizer=tokenizer, vocab_size=vocab_size,
                                   max_length=max_length, image_size=image_size, channels=channels,
                                   normalise=normalise, task=task, seed=seed))
        ds = data_task.outputs["dataset"]
        # always present so the graph does not depend on the start; "none" is never read
        onnx_in = dsl.importer(artifact_uri=onnx_model, artifact_class=dsl.Model, reimport=False)
        onnx_in.set_display_name("import-onnx-model")
        train_task = t(train(dataset=ds, architecture=architecture, model_args=model_args, code_dir=code_dir,
                             weights=weights, replace_head=replace_head, onnx_model=onnx_model,
                             start_fingerprint=start_fingerprint, epochs=epochs,
                             batch_size=batch_size, learning_rate=learning_rate, seed=seed))
        prune_task = t(prune(model=train_task.outputs["model"], dataset=ds, method="structured",
                             amount=prune_amount, finetune_epochs=prune_finetune_epochs, seed=seed, recipe=steps))
        distil_task = t(distil(teacher=train_task.outputs["model"], dataset=ds,
                               student_architecture=student_architecture, student_args=student_args,
                               code_dir=code_dir, temperature=temperature, alpha=alpha, epochs=distil_epochs,
                               seed=seed, recipe=steps))
        qat_task = t(qat(model=train_task.outputs["model"], dataset=ds, epochs=qat_epochs,
                         learning_rate=qat_learning_rate, batch_size=batch_size, per_channel=qat_per_channel,
                         seed=seed, recipe=steps))
        export_base = t(export_onnx(model=train_task.outputs["model"], dataset=ds, imported=onnx_in.output,
                                    start_fingerprint=start_fingerprint))
        export_pruned = t(export_onnx(model=prune_task.outputs["pruned"], dataset=ds))
        export_student = t(export_onnx(model=distil_task.outputs["student"], dataset=ds))
        with dsl.ParallelFor(quantisation_methods, name="quantise-methods") as method:
            q_base = t(quantise(onnx_model=export_base.outputs["onnx_model"], dataset=ds, method=method,
                                calibration_samples=calibration_samples, recipe=steps))
            q_pruned = t(quantise(onnx_model=export_pruned.outputs["onnx_model"], dataset=ds, method=method,
                                  calibration_samples=calibration_samples, recipe=steps))
            q_student = t(quantise(onnx_model=export_student.outputs["onnx_model"], dataset=ds, method=method,
                                   calibration_samples=calibration_samples, recipe=steps))
        # Timings must not be cached: they describe this machine now, and the champion may have changed.
        bench = t(benchmark(
            dataset=ds, torch_model=train_task.outputs["model"], onnx_model=export_base.outputs["onnx_model"],
            pruned_onnx=export_pruned.outputs["onnx_model"], student_onnx=export_student.outputs["onnx_model"],
            qat_onnx=qat_task.outputs["quantised"],
            quantised=dsl.Collected(q_base.outputs["quantised"]),
            quantised_pruned=dsl.Collected(q_pruned.outputs["quantised"]),
            quantised_student=dsl.Collected(q_student.outputs["quantised"]),
            repository=repository, model_name=model_name, threads=threads, window_seconds=window_seconds,
            max_windows=max_windows), cache=False)
        sel = t(select(results=bench.outputs["results"], tolerance=tolerance, tolerance_mode=tolerance_mode,
                       p95_budget_ms=p95_budget_ms, size_budget_bytes=size_budget_bytes, objective=objective,
                       accuracy_floor=accuracy_floor, rmse_ceiling=rmse_ceiling), cache=False)
        # the chosen model, blessed or not: a device build does not wait for the server's champion
        with dsl.If(edge_export == True, name="edge-export"):  # noqa: E712
            t(export_edge(model=sel.outputs["chosen"], dataset=ds, threads=threads, window_seconds=window_seconds,
                          max_windows=max_windows, target_platform=edge_target_platform), cache=False)
        with dsl.If(sel.outputs["Output"] == True, name="blessed"):  # noqa: E712 (a KFP condition, not Python)
            # local: the next version in `repository`; vertex: Model Registry + endpoint
            deployed = target.deploy(model=sel.outputs["chosen"], repository=repository, model_name=model_name)
            if target.tunes_serving:
                with dsl.If(tune_serving == True, name="tune-serving"):  # noqa: E712
                    t(tune_serving_op(repository=repository, model_name=model_name,
                                      deployed_version=deployed.outputs["Output"], concurrency=tune_concurrency,
                                      p99_budget_ms=tune_p99_budget_ms, search=tune_search), cache=False)

    return optimise
