"""serving.grpc: the gRPC transport over the data plane: Triton's `inference.GRPCInferenceService`
(the definitions shipped in tritonclient[grpc]) on a `grpc.aio` server. ``codec`` turns its
messages into the data plane's objects and back, ``service`` answers each RPC and maps errors to
gRPC status codes, ``transport`` binds, starts and drains the server beside the HTTP one."""
