"""serving: ``modelpress serve``, a KServe v2 (Triton-compatible) server over ONNX Runtime. It owns
the error types and how they become statuses (``errors``), the wire codec shared with clients
(``protocol``), the loaded models and their hot reload (``store``), dynamic batching
(``batching``), class names and probabilities (``postprocess``), text classifiers (``text``: texts
to token ids and batches of mixed lengths; ``textmodel``: a text version's tokenizer, what it
accepts and says), the transport-free data plane (``dataplane``), the HTTP transport
(``rest``), the gRPC transport (``grpc``: Triton's GRPCInferenceService), Prometheus metrics (``metrics``) and process start-up, Vertex mode included
(``server``, ``cli``, ``settings``)."""
