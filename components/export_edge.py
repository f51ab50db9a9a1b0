from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components import DEFAULT_IMAGE


@dsl.component(base_image=DEFAULT_IMAGE, install_kfp_package=False)
def export_edge(
    model: Input[Model],
    dataset: Input[Dataset],
    edge_model: Output[Model],
    metrics: Output[Metrics],
    table: Output[Markdown],
    threads: int = 1,
    window_seconds: float = 0.5,
    max_windows: int = 10,
    load_repeats: int = 10,
    target_platform: str = "",
    type_reduction: bool = False,
    atol: float = 1e-5,
    rtol: float = 1e-5,
):
    """Convert the selected ONNX model to ONNX Runtime's ORT format for the edge; measure both side by side.

    Args:
        model: The ONNX model to convert (select's chosen model); with none chosen the step writes a skip note.
        dataset: The dataset artifact; the ORT model's outputs are checked against the ONNX model's on its
            test split.
        threads: ONNX Runtime intra-op threads for the load and latency measurements (an edge device's cores).
        window_seconds: Seconds per latency measurement window (batch 1, .onnx and .ort interleaved).
        max_windows: The most windows measured before the figures are taken unsettled.
        load_repeats: Session loads per file; the load time is their median.
        target_platform: Where the ORT model will run: '' (any CPU: portable optimisations), arm (int8 QDQ
            kept as int8 kernels) or amd64 (adds x86-only NCHWc layouts).
        type_reduction: Also list each operator's types in the config (required_operators_and_types.config),
            for a build with --enable_reduced_operator_type_support.
        atol: Absolute tolerance of the ORT model's outputs against the ONNX model's.
        rtol: Relative tolerance; any output beyond atol + rtol * |onnx|, or any changed class, fails the step.

    Returns:
        edge_model: model.onnx, model.ort, the required-operators config and meta.json (the model card with
            the measurements, the check and the operators under `edge`).
        metrics: Size, median load time and batch-1 p50/p95 latency of .onnx and .ort, the size ratio, the
            largest output difference and the operator count.
        table: The figures as Markdown, with the machine and the operators for a reduced build.
    """
    import os

    from components._io import record, skip
    from modelpress.export import runtime

    if not os.path.isfile(os.path.join(model.path, runtime.ONNX_FILE)):  # select chose no variant
        skip("export-edge", "select chose no model to convert", [edge_model], [metrics])
        with open(table.path, "w") as f:
            f.write("No edge export: select chose no model.\n")
        return
    from modelpress.selection import edge_benchmark

    record(edge_benchmark.export_edge(model.path, dataset.path, edge_model.path, threads=threads,
                                      window_seconds=window_seconds, max_windows=max_windows,
                                      load_repeats=load_repeats, target_platform=target_platform,
                                      type_reduction=type_reduction, atol=atol, rtol=rtol, table_path=table.path),
           artifact=edge_model, metrics=metrics)
