"""tune-serving: find the serving config that serves one model best on this machine, by measuring.

What Triton's Model Analyzer does, for `modelpress serve`: each candidate (instance count x ONNX
Runtime intra-op threads x `max_queue_delay_microseconds` x preferred batch sizes) is served by
a real server subprocess and measured with the project's load generator at the user's load
(``tuning_measure``). A grid keeps instances x threads within the cores this process may use;
`search="quick"` hill-climbs from the current config instead. The best point (highest
throughput whose p99 meets the budget; within the measured noise, fewer cores, then lower p99)
is written into the repository's config.pbtxt atomically, everything else of the config kept,
so a running `modelpress serve` reloads it at its next poll.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import local_path
from modelpress.deploy import repository as repo
from modelpress.loadtest.tuning_measure import Load, Server, candidate_repository, measure

THREAD_PARAM = repo.THREAD_PARAM
DEFAULT_DELAYS_US = (0, 500, 2000)


class NoPointMeetsBudget(ModelpressError):
    """No measured setting met the p99 budget; `report` holds every point (nothing was written)."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Setting:
    instances: int
    threads: int                   # ONNX Runtime intra-op threads per instance
    delay_us: int | None           # None: no dynamic batching (a model without a batch dimension)
    preferred: tuple[int, ...] = ()

    @property
    def cores(self) -> int:
        return self.instances * self.threads

    def label(self) -> str:
        batching = "no batching" if self.delay_us is None else \
            f"delay {self.delay_us} us, preferred {','.join(map(str, self.preferred)) or 'none'}"
        return f"{self.instances} inst x {self.threads} thr, {batching}"

    def as_dict(self) -> dict:
        return {"instances": self.instances, "threads": self.threads, "cores": self.cores,
                "max_queue_delay_us": self.delay_us, "preferred_batch_sizes": list(self.preferred)}


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def current_setting(config, cores: int) -> Setting:
    """What the config serves with, as `modelpress serve` reads it (threads: the config's
    intra_op_thread_count, else cores / instances)."""
    instances, threads = repo.serving_layout(config, cores)
    if config.max_batch_size > 0 and config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        return Setting(instances, threads, int(db.max_queue_delay_microseconds), tuple(db.preferred_batch_size))
    return Setting(instances, threads, None)


def apply(config, s: Setting):
    """A copy of `config` with the setting's values; inputs, outputs, version policy, parameters kept."""
    from tritonclient.grpc import model_config_pb2 as mc

    out = mc.ModelConfig()
    out.CopyFrom(config)
    if out.instance_group:
        del out.instance_group[1:]   # modelpress sums the groups' counts: one group holds the count
        out.instance_group[0].count = s.instances
    else:
        out.instance_group.add(count=s.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    out.parameters[THREAD_PARAM].string_value = str(s.threads)
    # the next deploy of this model keeps these settings (repository.keep_tuned)
    out.parameters[repo.TUNED_PARAM].string_value = "modelpress tune-serving"
    if s.delay_us is not None:
        out.dynamic_batching.max_queue_delay_microseconds = s.delay_us
        del out.dynamic_batching.preferred_batch_size[:]
        out.dynamic_batching.preferred_batch_size.extend(s.preferred)
    return out


def _ladder(cores: int) -> list[int]:
    """1..cores on small machines; powers of two and `cores` itself above 4."""
    return list(range(1, cores + 1)) if cores <= 4 else sorted({2 ** k for k in range(cores.bit_length())
                                                               if 2 ** k <= cores} | {cores})


def check_axes(cores: int, default: Setting, max_batch_size: int, *, instances=None, threads=None, delays_us=None,
               preferred=None) -> dict:
    """The grid's axes, each checked: a bad value is a ModelpressError naming the option and the fix."""
    def ints(name, values, least):
        values = sorted({int(v) for v in values})
        if not values or values[0] < least:
            raise ModelpressError(f"bad grid value: {name} must be integers >= {least}, got {values}")
        return values

    axes = {"instances": ints("--instances", instances or _ladder(cores), 1),
            "threads": ints("--threads", threads or _ladder(cores), 1)}
    if axes["instances"][0] * axes["threads"][0] > cores:
        raise ModelpressError(f"bad grid value: --instances {axes['instances'][0]} x --threads {axes['threads'][0]} "
                              f"exceeds the {cores} cores this process may use (instances x threads <= cores)")
    for key, given, other in (("instances", instances, "threads"), ("threads", threads, "instances")):
        least = axes[other][0]
        over = [v for v in axes[key] if v * least > cores]
        if over and given:
            raise ModelpressError(f"bad grid value: --{key} {','.join(map(str, over))} exceeds the {cores} cores this "
                                  f"process may use with {least} {other} (instances x threads <= cores)")
        axes[key] = [v for v in axes[key] if v * least <= cores]  # a defaulted axis keeps what fits
    if max_batch_size <= 0:  # no batch dimension: nothing to batch
        axes["delays_us"], axes["preferred"] = [None], [()]
        if delays_us or preferred:
            raise ModelpressError("bad grid value: the model has max_batch_size 0 (no batch dimension), so "
                                  "--delays-us and --preferred-batch-sizes do not apply")
        return axes
    axes["delays_us"] = ints("--delays-us", delays_us if delays_us is not None else
                             sorted(set(DEFAULT_DELAYS_US) | ({default.delay_us} - {None})), 0)
    groups = [tuple(sorted(set(int(b) for b in g))) for g in (preferred if preferred is not None else
                                                                [default.preferred, ()])]
    for g in groups:
        if g and (g[0] < 1 or g[-1] > max_batch_size):
            raise ModelpressError(f"bad grid value: --preferred-batch-sizes {','.join(map(str, g))}: each size must "
                                  f"be between 1 and the model's max_batch_size {max_batch_size}")
    axes["preferred"] = list(dict.fromkeys(groups))
    return axes


def grid(axes: dict, cores: int) -> list[Setting]:
    """Every combination with instances x threads <= cores. With a delay of 0 the preferred sizes
    change nothing (a batch takes what is queued and goes), so that delay is measured once."""
    out = []
    for i in axes["instances"]:
        for t in axes["threads"]:
            if i * t > cores:
                continue
            for d in axes["delays_us"]:
                for p in (axes["preferred"][:1] if not d else axes["preferred"]):
                    out.append(Setting(i, t, d, p if d is not None else ()))
    return out


def neighbours(s: Setting, axes: dict, cores: int) -> list[Setting]:
    """One step along one axis (its next value up or down): the hill-climb's candidates."""
    out = []
    for field, values in (("instances", axes["instances"]), ("threads", axes["threads"]),
                          ("delay_us", axes["delays_us"]), ("preferred", axes["preferred"])):
        current = getattr(s, field)
        if field == "preferred" and not s.delay_us:
            continue
        values = sorted(set(values) | {current}, key=lambda v: (v is None, v))
        i = values.index(current)
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                n = Setting(**{**s.__dict__, field: values[j]})
                if n.cores <= cores:
                    out.append(n)
    return out


def usable(point: dict) -> bool:
    return not point.get("failed") and not point["errors"] and point["ok"] > 0 and "p99" in point["latency_ms"]


def rank(points: list[dict], budget_ms: float) -> tuple[dict | None, list[dict], dict | None]:
    """(chosen, the points tied with the best, the best by throughput) among points without errors
    whose p99 meets the budget (no budget: all). Tied: throughput within the measured noise of the
    best (the larger of the two points' window-to-window spreads); the tie goes to fewer cores,
    then lower p99."""
    feasible = [p for p in points if usable(p) and (budget_ms <= 0 or p["latency_ms"]["p99"] <= budget_ms)]
    if not feasible:
        return None, [], None
    best = max(feasible, key=lambda p: p["throughput_rps"])
    ties = [p for p in feasible
            if p["throughput_rps"] >= best["throughput_rps"] * (1 - max(best["noise"] or 0, p["noise"] or 0))]
    chosen = min(ties, key=lambda p: (p["settings"]["cores"], p["latency_ms"]["p99"], -p["throughput_rps"]))
    return chosen, ties, best


def _progress(log, n: int, total: int | str, point: dict, started: float, remaining: int, prefix: str) -> None:
    lat = point["latency_ms"]
    if point.get("failed"):
        figures = f"FAILED: {point['failed']}"
    else:
        errors = sum(point["errors"].values())
        figures = (f"{point['throughput_rps']:.0f} req/s, p50 {lat.get('p50', float('nan')):.2f} "
                   f"p95 {lat.get('p95', float('nan')):.2f} p99 {lat.get('p99', float('nan')):.2f} ms, "
                   f"{errors} errors, {len(point['windows'])} windows, {'stable' if point['stable'] else 'UNSTABLE'}"
                   f" (noise {100 * (point['noise'] or 0):.1f}%)")
    per_point = (time.monotonic() - started) / n
    bound = "at most " if isinstance(total, str) else ""  # quick search: max_points bounds what is left
    eta = f"; ETA {bound}{int(per_point * remaining // 60)}m{int(per_point * remaining % 60):02d}s" if remaining else ""
    log(f"[{n}/{total}] {prefix}{point['label']}: {figures}{eta}")


class _Run:
    """The state of one tuning run: the served version, the load, a work folder, the points."""

    def __init__(self, config, version_dir: Path, model: str, load: Load, work: Path, log):
        self.config, self.version_dir, self.model, self.load, self.work, self.log = \
            config, version_dir, model, load, work, log
        self.points: dict[Setting, dict] = {}
        self.started = time.monotonic()

    def measure(self, s: Setting, config_text: str | None = None, prefix: str = "",
                total: int | str = "?", remaining: int = 0) -> dict:
        from google.protobuf import text_format

        if s in self.points and config_text is None:
            return self.points[s]
        n = len(self.points) + 1
        folder = self.work / f"point-{n}"
        if config_text is None:
            candidate = apply(self.config, s)
            candidate.version_policy.Clear()
            candidate.version_policy.latest.num_versions = 1  # the temporary repository holds one version
            config_text = text_format.MessageToString(candidate)
        candidate_repository(folder / "repo", self.model, self.version_dir, config_text)
        point = {"label": s.label(), "settings": s.as_dict(), "failed": None}
        t0 = time.monotonic()
        try:
            with Server(folder / "repo", self.model, folder / "serve.log") as server:
                point.update(measure(server.url, self.model, self.load))
        except ModelpressError as exc:
            point.update({"failed": str(exc), "throughput_rps": 0.0, "rows_per_s": 0.0, "latency_ms": {}, "ok": 0,
                          "requests": 0, "errors": {}, "stable": False, "noise": None, "windows": []})
        point["seconds"] = round(time.monotonic() - t0, 2)
        self.points[s] = point
        _progress(self.log, n, total, point, self.started, remaining, prefix)
        return point


def tune(repository: str, model: str, *, concurrency: int = 16, rate: float | None = None,
         arrivals: str = "constant", p99_budget_ms: float = 0.0, search: str = "grid", duration_s: float = 10.0,
         warmup_s: float = 2.0, batch: int = 1, instances=None, threads=None, delays_us=None, preferred=None,
         max_windows: int = 6, max_points: int = 16, dry_run: bool = False, report_dir: str | None = None,
         log=print) -> dict:
    """Measure candidate serving configs of `model` in `repository` and write the best one into its
    config.pbtxt (unless `dry_run`); returns the report (and writes it to `report_dir` when given:
    tuning.json, tuning.md, tuning.png). Raises NoPointMeetsBudget (its `report` attached, files
    written, config untouched) when no point meets `p99_budget_ms`; ModelpressError for bad input."""
    from modelpress.loadtest import tuning_report

    if search not in ("grid", "quick"):
        raise ModelpressError(f"search must be 'grid' or 'quick', got {search!r}")
    if arrivals not in ("constant", "poisson"):
        raise ModelpressError(f"arrivals must be 'constant' or 'poisson', got {arrivals!r}")
    if rate is not None and rate <= 0 or concurrency < 1 or batch < 1:
        raise ModelpressError("rate must be > 0, concurrency and batch >= 1")
    if duration_s <= 0 or warmup_s < 0 or max_windows < 3 or p99_budget_ms < 0 or max_points < 1:
        raise ModelpressError("duration must be > 0, warm-up >= 0, max windows >= 3, the p99 budget >= 0 "
                              "and max points >= 1")
    root = local_path(repository)
    if not root.is_dir():
        raise ModelpressError(f"no model repository at {repository}")
    repo.check_name(model)
    if not (root / model / repo.CONFIG_FILE).is_file():
        held = sorted(d.name for d in root.iterdir() if (d / repo.CONFIG_FILE).is_file())
        raise ModelpressError(f"model {model!r} is not in the repository {repository}; it holds {held}")
    config_path = root / model / repo.CONFIG_FILE
    before = config_path.read_text()
    config = repo.read_config(root, model)
    from modelpress.serving.store import select_versions
    served = select_versions(config, repo.versions(root, model))
    if not served:
        raise ModelpressError(f"model {model!r} in {repository} has no version its version policy serves "
                              f"(a numbered folder with {repo.runtime.ONNX_FILE})")
    cores = usable_cores()
    default = current_setting(config, cores)
    axes = check_axes(cores, default, config.max_batch_size, instances=instances, threads=threads,
                      delays_us=delays_us, preferred=preferred)
    load = Load(concurrency=concurrency, rate=rate, arrivals=arrivals, duration_s=duration_s, warmup_s=warmup_s,
                batch=batch, max_windows=max_windows)
    candidates = grid(axes, cores)
    log(f"tune-serving {model} (version {served[-1]}) on {cores} cores: {load.describe()}, "
        f"{duration_s:g} s per point (+{warmup_s:g} s warm-up), {search} search"
        + (f" over {len(candidates)} settings" if search == "grid" else "")
        + (f", p99 budget {p99_budget_ms:g} ms" if p99_budget_ms else ""))
    with tempfile.TemporaryDirectory(prefix="modelpress-tune-") as work:
        run = _Run(config, root / model / str(served[-1]), model, load, Path(work), log)
        total = 1 + len([c for c in candidates if c != default]) if search == "grid" else f"<={max_points}"
        default_point = run.measure(default, before, prefix="current config: ", total=total,
                                    remaining=(total - 1) if search == "grid" else max_points - 1)
        if search == "grid":
            todo = [c for c in candidates if c != default]
            for i, s in enumerate(todo):
                run.measure(s, total=total, remaining=len(todo) - i - 1)
        else:
            current = default
            while len(run.points) < max_points:
                for s in neighbours(current, axes, cores):
                    if len(run.points) < max_points:
                        run.measure(s, total=total, remaining=max_points - len(run.points) - 1)
                pts = [run.points[s] for s in run.points]
                chosen, _, _ = rank(pts, p99_budget_ms)
                if chosen is None:  # nothing meets the budget yet: climb towards the lowest p99
                    chosen = min([p for p in pts if usable(p)], key=lambda p: p["latency_ms"]["p99"], default=None)
                step = next((s for s, p in run.points.items() if p is chosen), None)
                if step is None or step == current:
                    break
                current = step
        points = list(run.points.items())
    chosen, ties, best = rank([p for _, p in points], p99_budget_ms)
    setting = next((s for s, p in points if p is chosen), None)
    report = tuning_report.build(model=model, repository=str(repository), version=served[-1], load=load,
                                 search=search, budget_ms=p99_budget_ms, cores=cores, axes=axes, points=points,
                                 default=default_point, chosen=chosen, ties=ties, best=best, dry_run=dry_run)
    report["config_before"] = before
    if chosen is not None:
        text = _config_text(config, setting)
        report["config_after"] = text
        if dry_run:
            report["written"], report["write_note"] = False, "dry run: nothing written"
        elif text == before:
            report["written"], report["write_note"] = False, "the config already holds the chosen values"
        else:
            try:
                write_config(config_path, text, before)
                report["written"], report["write_note"] = True, f"wrote {config_path}"
            except ModelpressError as exc:
                report["written"], report["write_note"] = False, str(exc)
                if report_dir:
                    tuning_report.write(report, Path(report_dir))
                raise
    else:
        report["written"], report["write_note"] = False, "no point met the budget: nothing written"
    if report_dir:
        report["files"] = tuning_report.write(report, Path(report_dir))
    if chosen is None:
        raise NoPointMeetsBudget(report["why"] + (f"; report in {report_dir}" if report_dir else ""), report)
    log(report["why"])
    log(report["write_note"] + (f"; report in {report_dir}" if report_dir else ""))
    return report


def _config_text(config, s: Setting) -> str:
    from google.protobuf import text_format
    return text_format.MessageToString(apply(config, s))


def write_config(path: Path, text: str, expected: str) -> None:
    """Replace config.pbtxt in one rename, as repository.deploy does; refuse when it changed
    while tuning (a deploy meanwhile): the measurements were of another config."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    text_format.Parse(text, mc.ModelConfig())  # never write a config Triton could not read
    if path.read_text() != expected:
        raise ModelpressError(f"{path} changed while tuning (a deploy meanwhile?); nothing written: tune again")
    fd, tmp = tempfile.mkstemp(prefix=f".{repo.CONFIG_FILE}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
