"""loadtest: a client, not part of the server: the load generator for any KServe v2 HTTP server
(closed-loop concurrency sweeps and open-loop fixed-rate runs, ``generator``), its results as a
table, JSON and a plot (``report``), and the ``modelpress loadtest`` command (``cli``). It speaks
the wire format through ``modelpress.serving.protocol`` and imports nothing else of the server."""

from modelpress.loadtest.generator import Target, closed_loop, open_loop, run
from modelpress.loadtest.report import HEADER, LevelResult, format_row, latency_summary, plot, table, to_json

__all__ = ["HEADER", "LevelResult", "Target", "closed_loop", "format_row", "latency_summary", "open_loop", "plot",
           "run", "table", "to_json"]
