"""export: the ONNX model artifact and its ONNX Runtime sessions (``runtime``, torch-free, used
by everything that runs ONNX, the server included) and the torch-to-ONNX export with its
numerical verification (``onnx_export``)."""
