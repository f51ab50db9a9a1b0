"""compression: structured and unstructured pruning, knowledge distillation, and post-training
quantisation with ONNX Runtime (static and dynamic int8, fp16)."""
