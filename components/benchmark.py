from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def benchmark(
    dataset: Input[Dataset],
    torch_model: Input[Model],
    onnx_model: Input[Model],
    pruned_onnx: Input[Model],
    student_onnx: Input[Model],
    quantised: Input[List[Model]],
    quantised_pruned: Input[List[Model]],
    quantised_student: Input[List[Model]],
    results: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    qat_onnx: Input[Model] = None,
    repository: str = "",
    model_name: str = "digits",
    threads: int = 2,
    throughput_batch: int = 64,
    window_seconds: float = 0.5,
    max_windows: int = 10,
):
    """Score and time every variant, and the deployed champion, side by side on the same test split.

    Args:
        dataset: The dataset artifact whose test split every variant is scored and timed on.
        torch_model: The trained torch model: the fp32 baseline that sets the accuracy bar.
        onnx_model: Its fp32 ONNX export: the baseline of the ONNX-side ratios.
        pruned_onnx: The pruned model's fp32 ONNX export.
        student_onnx: The distilled student's fp32 ONNX export.
        quantised: The quantised ONNX exports of the trained model, one per method.
        quantised_pruned: The quantised ONNX exports of the pruned model.
        quantised_student: The quantised ONNX exports of the student.
        qat_onnx: The quantisation-aware trained int8 ONNX model (a skip note when the recipe leaves qat out).
        repository: The model repository of the deployed champion ("": no champion is measured).
        model_name: The deployed model's name in `repository`.
        threads: CPU threads for every runtime.
        throughput_batch: The batch size of the throughput measurement.
        window_seconds: The length of one batch-1 latency measurement window.
        max_windows: The most windows per variant while waiting for three consecutive ones to agree.

    Returns:
        results: Every figure as JSON (accuracy, latency percentiles and stability, throughput, size, the
            machine); the select step reads it. Its metadata lists the variants.
        metrics: Work seconds, the number of variants, and each variant's p50 latency and accuracy.
        report: The HTML report: the variants' table and plots.
    """
    from components._io import record
    from modelpress.selection import comparison

    def pairs(group):  # the library takes (path, metadata) pairs, not KFP artifacts
        return [(art.path, art.metadata) for art in group]

    variants = comparison.optimisation_variants(torch_model.path, onnx_model.path, pruned_onnx.path,
                                                student_onnx.path, pairs(quantised), pairs(quantised_pruned),
                                                pairs(quantised_student), qat_onnx.path if qat_onnx else None)
    record(comparison.benchmark_optimisation(variants, dataset.path, results.path, report.path,
                                             champion_repository=repository, model_name=model_name,
                                             threads=threads, throughput_batch=throughput_batch,
                                             window_seconds=window_seconds, max_windows=max_windows),
           artifact=results, metrics=metrics)
