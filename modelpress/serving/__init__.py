"""Serving: a KServe v2 (Triton-compatible) HTTP server over ONNX Runtime, and a load generator."""
