"""export: the ONNX model artifact and its ONNX Runtime sessions (``runtime``, torch-free, used
by everything that runs ONNX, the server included), the torch-to-ONNX export (``onnx_export``)
and its numerical verification against torch on the test split (``verify``)."""
