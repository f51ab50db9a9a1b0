"""`modelpress tune-serving REPOSITORY --model NAME`: its arguments; the work is `tuning.tune`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from modelpress.core.errors import ModelpressError

PROG = "modelpress tune-serving"


def _ints(option: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ModelpressError(f"bad grid value: {option} takes comma-separated integers like 1,2, "
                              f"got {text!r}") from None
    if not values:
        raise ModelpressError(f"bad grid value: {option} is empty")
    return values


def _groups(texts: list[str] | None) -> list[tuple[int, ...]] | None:
    if texts is None:
        return None
    return [() if t.strip().lower() == "none" else tuple(_ints("--preferred-batch-sizes", t)) for t in texts]


def _one_line_error(message: str) -> None:
    print(f"{PROG}: error: {message} (see {PROG} --help)", file=sys.stderr)
    sys.exit(2)


def add_tune_serving(commands) -> None:
    p = commands.add_parser(
        "tune-serving", help="measure serving configs of a deployed model and write the best into config.pbtxt",
        description="Serve each candidate config (instances x ONNX Runtime threads x max_queue_delay_microseconds x "
        "preferred batch sizes, instances x threads within this machine's cores) with a real `modelpress serve` "
        "on 127.0.0.1, drive it with the load generator at your load, and write the best one (highest throughput "
        "whose p99 meets --p99-budget-ms; within the measured noise, fewer cores, then lower p99) into "
        "REPOSITORY/NAME/config.pbtxt atomically. A running server reloads it at its next poll.")
    p.error = _one_line_error  # a bad argument is one line, like every other refusal of this command
    p.add_argument("repository", help="the Triton-layout model repository the deploy step wrote")
    p.add_argument("--model", required=True, help="the model's folder name in the repository")
    p.add_argument("--concurrency", type=int, default=16, help="closed loop: clients back to back (default 16)")
    p.add_argument("--rate", type=float, help="open loop instead: requests per second")
    p.add_argument("--arrivals", choices=["constant", "poisson"], default="constant",
                   help="open loop: evenly spaced or Poisson arrivals (default constant)")
    p.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="measured seconds per point, in 3 windows (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each point (default 2)")
    p.add_argument("--max-windows", type=int, default=6,
                   help="windows measured at most while they disagree by more than 10%% (default 6)")
    p.add_argument("--p99-budget-ms", type=float, default=0.0,
                   help="the p99 latency a chosen point must meet (default: none, highest throughput)")
    p.add_argument("--search", choices=["grid", "quick"], default="grid",
                   help="grid: every combination; quick: hill-climb from the current config (default grid)")
    p.add_argument("--max-points", type=int, default=16, help="quick search: points measured at most (default 16)")
    p.add_argument("--instances", help="instance counts, e.g. 1,2 (default 1..cores)")
    p.add_argument("--threads", help="ONNX Runtime intra-op threads per instance, e.g. 1,2 (default 1..cores)")
    p.add_argument("--delays-us", help="max_queue_delay_microseconds values, e.g. 0,500,2000 (default 0,500,2000 "
                   "and the current one)")
    p.add_argument("--preferred-batch-sizes", nargs="+", metavar="SIZES",
                   help="preferred batch size sets, e.g. 8,32 none (default: the current set and none)")
    p.add_argument("--dry-run", action="store_true", help="measure and report, write no config")
    p.add_argument("--report", type=Path,
                   help="report folder (default tune-serving/<model>-<timestamp>/ under the current directory)")
    p.set_defaults(run=_tune_serving)


def _tune_serving(args) -> int:
    from modelpress.loadtest.tuning import NoPointMeetsBudget, tune

    if args.rate is not None and args.rate <= 0:
        raise ModelpressError(f"--rate must be > 0, got {args.rate:g}")
    for option, value, least in (("--concurrency", args.concurrency, 1), ("--batch", args.batch, 1),
                                 ("--max-windows", args.max_windows, 3), ("--max-points", args.max_points, 1)):
        if value < least:
            raise ModelpressError(f"{option} must be >= {least}, got {value}")
    if args.duration <= 0 or args.warmup < 0 or args.p99_budget_ms < 0:
        raise ModelpressError("--duration must be > 0, --warmup and --p99-budget-ms >= 0")
    report = args.report or Path("tune-serving") / f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        tune(args.repository, args.model, concurrency=args.concurrency, rate=args.rate, arrivals=args.arrivals,
             p99_budget_ms=args.p99_budget_ms, search=args.search, duration_s=args.duration, warmup_s=args.warmup,
             batch=args.batch, instances=_ints("--instances", args.instances), threads=_ints("--threads", args.threads),
             delays_us=_ints("--delays-us", args.delays_us), preferred=_groups(args.preferred_batch_sizes),
             max_windows=args.max_windows, max_points=args.max_points, dry_run=args.dry_run, report_dir=str(report),
             log=lambda line: print(line, flush=True))
    except NoPointMeetsBudget as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0
