"""batch_prediction: score a file (or folder) of instances with the deployed champion, a given version
or an ONNX model, offline.

local:  batch-predict (streamed in chunks, ONNX Runtime in this environment) -> predictions, errors
vertex: left to the vertex target (a Vertex AI batch prediction job over the registered model)
"""

from kfp import dsl

from pipelines.targets import Target


def build(target: Target):
    @dsl.pipeline(name="batch_prediction", description="Score a file of instances with the deployed model, in "
                                                        "chunks: predictions and a file of the rows that failed.")
    def batch_prediction(
        source: str = "digits",
        key_column: str = "",
        label_column: str = "label",
        text_column: str = "",
        repository: str = "model_repository",
        model_name: str = "digits",
        version: int = 0,
        onnx_model: str = "",
        output_format: str = "jsonl",
        batch_size: int = 64,
        threads: int = 2,
        chunk_rows: int = 10000,
    ):
        target.batch_predict(source=source, key_column=key_column, label_column=label_column,
                             text_column=text_column, repository=repository, model_name=model_name, version=version,
                             onnx_model=onnx_model, output_format=output_format, batch_size=batch_size,
                             threads=threads, chunk_rows=chunk_rows)

    return batch_prediction
