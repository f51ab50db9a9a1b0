"""loadtest: a client, not part of the server: the load generator for any KServe v2 server over HTTP
or gRPC (closed-loop concurrency sweeps and open-loop fixed-rate runs, ``generator``; the gRPC target,
Triton's GRPCInferenceService, ``grpc_target``), its results as a table, JSON and a plot (``report``),
and the ``modelpress loadtest`` command (``cli``). It speaks the wire formats through
``modelpress.serving.protocol`` and ``modelpress.serving.grpc.codec``. ``tuning`` (``modelpress
tune-serving``) starts real servers as subprocesses and drives them with the generator; beyond the
codecs it reads the repository (``deploy.repository``), the version policy (``serving.store``) and
the machine description (``selection.benchmarking``)."""

from modelpress.loadtest.generator import Target, closed_loop, open_loop, run
from modelpress.loadtest.grpc_target import GrpcTarget
from modelpress.loadtest.report import HEADER, LevelResult, format_row, latency_summary, plot, table, to_json

__all__ = ["HEADER", "GrpcTarget", "LevelResult", "Target", "closed_loop", "format_row", "latency_summary",
           "open_loop", "plot", "run", "table", "to_json"]
