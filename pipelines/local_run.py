"""Run a pipeline through kfp.local and summarise it (importable; run_local.py is the CLI).

kfp.local prints every task's executor input and output; the full stream goes to
``run.log`` in the run folder while the console shows the progress lines that matter.
The summary is built from the run folder (``executor_output.json`` per task), the local
cache (for cached tasks) and the timestamps of the runner's own log lines.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelpress.core.errors import ModelpressError
from modelpress.core.fileio import write_json_atomic

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_CACHE = re.compile(r"Task '?([^' ]+)'? cache hit \(key=(\w+)\)")
_PIPE_END = re.compile(r"Pipeline '([^']+)' finished with status (\w+)")
# the last line of a Python traceback: "modelpress.core.errors.ModelpressError: what went wrong"
_ERROR = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exit)): (.+)$")
KEY_METRICS = ("test_accuracy", "accuracy", "test_rmse", "rmse", "max_abs_diff", "size_bytes", "samples_per_s",
               "training_pflop_days", "epochs_run", "rows_predicted", "rows_failed", "rows_per_second")


@dataclass
class TaskRecord:
    name: str
    status: str = "RUNNING"
    started: float | None = None
    ended: float | None = None
    cached: bool = False
    cache_key: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return round((self.ended or time.time()) - self.started, 3) if self.started else 0.0


class LogTee(io.TextIOBase):
    """Stands in for sys.stdout during a run: records task events, keeps the full log."""

    def __init__(self, console, log_file, verbose: bool):
        self.console, self.log_file, self.verbose = console, log_file, verbose
        self.tasks: list[TaskRecord] = []
        self.pipeline_status: str | None = None
        self._buf = ""
        self._current: TaskRecord | None = None  # where unattributed output lines go
        self._running: list[TaskRecord] = []

    def writable(self):
        return True

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(line)
        return len(text)

    def flush(self):
        self.log_file.flush()
        self.console.flush()

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        now = time.time()
        show = self.verbose
        if m := _START.search(line):
            self._current = TaskRecord(m.group(1), started=now)
            self.tasks.append(self._current)
            self._running.append(self._current)
            self.console.write(f"▶ {m.group(1)}\n")
        elif m := _CACHE.search(line):
            rec = TaskRecord(m.group(1), status="CACHED", started=now, ended=now, cached=True,
                             cache_key=m.group(2))
            self.tasks.append(rec)
            self.console.write(f"▶ {m.group(1)}: cached result reused\n")
        elif m := _END.search(line):
            # ParallelFor iterations run concurrently: match the earliest running task of that name.
            rec = next((r for r in self._running if r.name == m.group(1)), None)
            if rec:
                self._running.remove(rec)
                rec.status, rec.ended = m.group(2), now
                self.console.write(f"  {rec.name}: {rec.status} in {rec.seconds:.1f}s\n")
                if rec.status != "SUCCESS" and not self.verbose:
                    self.console.write(f"    {rec.name} failed: {task_error(rec.lines)} (traceback in run.log)\n")
            self._current = self._running[-1] if self._running else None
        elif m := _PIPE_END.search(line):
            self.pipeline_status = m.group(2)
        elif self._current is not None:
            stripped = line.strip()
            self._current.lines.append(stripped)
            # the library's progress lines, and errors; not the executor's own chatter
            show = show or (stripped.startswith("[") and not stripped.startswith("[KFP Executor")
                            ) or "Error:" in stripped
            if show:
                self.console.write(f"    {stripped}\n")
            return
        if show:
            self.console.write(line + "\n")


def task_error(lines: list[str]) -> str:
    """The one line that says why a task failed: our own error's message, else the last exception."""
    found = [m for m in (_ERROR.match(ln) for ln in lines) if m]
    ours = [m for m in found if m.group(1) == "ModelpressError"]
    m = (ours or found or [None])[-1]
    if m is None:
        return lines[-1] if lines else "no output; see run.log"
    return m.group(2) if m.group(1) == "ModelpressError" else f"{m.group(1)}: {m.group(2)}"


def failure_line(summary: dict) -> str:
    """What run_local.py prints last when a run fails."""
    failed = [t for t in summary["tasks"] if t["status"] not in ("SUCCESS", "CACHED")]
    if not failed:
        return f"pipeline {summary.get('pipeline')} ended {summary['status']}; see {summary.get('log_path')}"
    t = failed[0]
    return f"{t['task']} failed: {t.get('error') or 'see run.log'}"


def task_label(name: str, metadata: dict) -> str:
    """A task name that says which iteration it was: ParallelFor repeats names (quantise-3 twice)."""
    q = (metadata.get("quantised") or {}).get("quantisation") or {}
    if q.get("method"):
        source = Path(str(metadata["quantised"].get("source_model", ""))).parent.name
        return f"{name} [{q['method']}{' of ' + source if source else ''}]"
    return name


def _outputs_from_executor(path: Path) -> dict:
    data = json.loads(path.read_text())
    out = {}
    for name, value in (data.get("parameterValues") or {}).items():
        out[name] = value
    for name, arts in (data.get("artifacts") or {}).items():
        art = arts["artifacts"][0]
        out[name] = {"uri": art.get("uri"), "metadata": art.get("metadata", {})}
    return out


def _outputs_from_cache(cache_dir: Path, key_prefix: str) -> dict:
    for path in cache_dir.glob(f"{key_prefix}*.json"):
        data = json.loads(path.read_text())
        return {k: ({"uri": v.get("uri"), "metadata": v.get("metadata", {})}
                    if isinstance(v, dict) and v.get("__kfp_artifact__") else v)
                for k, v in data.items()}
    return {}


def summarise(tee: LogTee, run_dir: Path | None, pipeline_root: Path) -> dict:
    executor_files = sorted(run_dir.rglob("executor_output.json")) if run_dir else []
    by_name: dict[str, list[Path]] = {}
    for f in executor_files:
        by_name.setdefault(f.parent.name, []).append(f)
    tasks = []
    for rec in tee.tasks:
        if rec.cached:
            outputs = _outputs_from_cache(pipeline_root / ".kfp_cache", rec.cache_key or "")
            where = None
        else:
            files = by_name.get(rec.name, [])
            f = files.pop(0) if files else None
            outputs = _outputs_from_executor(f) if f else {}
            where = str(f.parent.relative_to(run_dir)) if f else rec.name
        metrics, artifacts, params = {}, {}, {}
        for name, value in outputs.items():
            if isinstance(value, dict) and "uri" in value:
                artifacts[name] = value["uri"]
                if name in ("metrics",) or name.endswith("metrics") and name != "classification":
                    metrics.update({k: v for k, v in value["metadata"].items()
                                    if isinstance(v, (int, float))})
            else:
                params[name] = value
        work = metrics.get("work_seconds")
        overhead = round(rec.seconds - work, 3) if work is not None and not rec.cached else None
        art_meta = {k: v["metadata"] for k, v in outputs.items() if isinstance(v, dict) and "metadata" in v}
        tasks.append({"task": task_label(rec.name, art_meta), "path": where, "status": rec.status,
                      "cached": rec.cached, "error": task_error(rec.lines) if rec.status == "FAILURE" else None,
                      "seconds": rec.seconds, "work_seconds": work, "overhead_seconds": overhead,
                      "parameters": params, "metrics": metrics,
                      "artifacts": artifacts, "artifact_metadata": art_meta})
    summary = {"status": tee.pipeline_status or ("FAILURE" if any(t["status"] == "FAILURE" for t in tasks)
                                              else "UNKNOWN"),
            "run_dir": str(run_dir) if run_dir else None, "tasks": tasks}
    summary["result"] = _highlights(tasks)
    return summary


def _highlights(tasks: list[dict]) -> dict:
    """What the optimise pipeline decided, lifted out of its benchmark, select and deploy tasks."""
    sel = next((t for t in tasks if t["task"] == "select"), None)
    if sel is None:
        return {}
    chosen = sel["artifact_metadata"].get("chosen", {})
    out = {"selected_variant": chosen.get("variant"), "blessed": sel["parameters"].get("Output"),
           "reason": chosen.get("reason"),
           "ratios": {k: v for k, v in sel["metrics"].items()
                      if k.startswith(("speedup", "size_ratio", "accuracy", "rmse", "stable_vs"))},
           "report": sel["artifacts"].get("report"), "table": sel["artifacts"].get("table"),
           **_from_results(tasks, chosen.get("variant"))}
    dep = next((t for t in tasks if t["task"].startswith("deploy")), None)
    out["deployed_version"] = dep["parameters"].get("Output") if dep and dep["status"] == "SUCCESS" else None
    out["edge"] = next((t["metrics"] for t in tasks if t["task"] == "export-edge"), None)  # {} when skipped
    return out


def _from_results(tasks: list[dict], chosen: str | None) -> dict:
    """The benchmark's results as the summary tells them (`selection.quality.highlights`)."""
    from modelpress.selection import quality

    bench = next((t for t in tasks if t["task"] in ("benchmark", "score-challenger")), None)
    uri = (bench or {}).get("artifacts", {}).get("results")
    try:
        results = json.loads(Path(uri).read_text()) if uri else {"variants": []}
        return quality.highlights(results, chosen)
    except (OSError, ValueError, KeyError):
        return {"latency": {}}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def headline(res: dict) -> list[str]:
    """The speed-up lines: a ratio is headlined only when both of its figures were stable."""
    from modelpress.selection import quality

    lines, r, lat = [], res.get("ratios", {}), res.get("latency", {})
    for label, key in (("torch eager fp32", "torch"), ("ONNX fp32", "onnx_fp32")):
        if f"speedup_p50_vs_{key}" not in r:
            continue
        mine, ref = lat.get("chosen"), lat.get(key)
        figures = (f"p50 {mine['p50_ms']:.4g} ms{mine['unstable']} vs {ref['p50_ms']:.4g} ms{ref['unstable']}"
                   if mine and ref else "p50")
        rest = f"{r[f'size_ratio_vs_{key}']:.3f}x the size, {quality.delta_text(r, key)}"
        if r.get(f"stable_vs_{key}", 1.0):
            lines.append(f"  vs {label}: {r[f'speedup_p50_vs_{key}']:.2f}x faster ({figures}, batch 1), {rest}")
        else:
            lines.append(f"  vs {label}: speed-up not headlined, the latency was unstable ({figures}, batch 1; "
                         f"ratio {r[f'speedup_p50_vs_{key}']:.2f}x indicative only: rerun on a quiet machine), {rest}")
    return lines


def format_summary(summary: dict) -> str:
    from modelpress.selection.quality import summary_lines

    lines = [f"pipeline {summary['pipeline']}: {summary['status']} in {summary['seconds']:.1f}s",
             f"  {'task':<40} {'status':<8} {'seconds':>8} {'overhead':>8}  key metrics"]
    for t in summary["tasks"]:
        keys = [k for k in KEY_METRICS if k in t["metrics"]][:4]
        shown = ", ".join(f"{k}={_fmt(t['metrics'][k])}" for k in keys)
        over = f"{t['overhead_seconds']:.1f}" if t.get("overhead_seconds") is not None else "-"
        lines.append(f"  {t['task']:<40} {t['status']:<8} {t['seconds']:>8.1f} {over:>8}  {shown}")
        if t.get("error"):
            lines.append(f"    error: {t['error']}")
    res = summary.get("result") or {}
    if res:
        lines.append(f"selected: {res['selected_variant'] or 'nothing'}"
                     + (f" ({res['reason']})" if res.get("reason") else ""))
        lines += summary_lines(res)
        lines += headline(res)
        lines.append(f"  report: {summary.get('report_path') or res.get('report')}")
        lines.append(f"  deployed: version {res['deployed_version']} (serve it: make serve, then see README "
                     "'Serving')" if res.get("deployed_version") else "  deployed: nothing (not blessed)")
    lines.append("outputs:")
    for t in summary["tasks"]:
        for name, uri in t["artifacts"].items():
            if name not in ("metrics", "classification"):
                lines.append(f"  {t['task']}.{name}: {uri}")
    if summary.get("summary_path"):
        lines.append(f"summary: {summary['summary_path']}")
    if summary.get("log_path"):
        lines.append(f"full log: {summary['log_path']}")
    return "\n".join(lines)


def check_docker(image: str) -> None:
    """Fail with the fix unless a Docker engine answers and has (or can pull) `image`."""
    try:
        import docker
    except ImportError:
        raise ModelpressError("--runner docker needs the `docker` Python package (pinned in "
                              "pyproject.toml): run `make install`") from None

    where = os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise ModelpressError(
            f"--runner docker: no Docker engine answers at {where} ({exc}). Start Docker (Docker "
            "Desktop, or `sudo systemctl start docker`) and check that `docker info` works, or leave "
            "out --runner docker: the default runner uses this virtual environment") from None
    try:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            try:
                client.images.pull(image)  # a registry image, e.g. one `make images` pushed
            except docker.errors.DockerException as exc:
                raise ModelpressError(
                    f"--runner docker: image {image!r} is not on this machine and cannot be pulled "
                    f"({exc}). Build it with `docker build -f containers/cpu/Dockerfile -t {image} .` "
                    "from the repository root, or name a pushed one with --image") from None
    finally:
        client.close()


def docker_runner(host_paths=()):
    """A kfp.local.DockerRunner (call check_docker first: kfp's own errors are tracebacks).

    DockerRunner bind-mounts only the pipeline root, at its own path; `host_paths` (a dataset
    file, the model repository) are mounted the same way. Tasks run as the calling user, so
    they can write to the mounted folders and what they write there is yours.
    """
    import docker
    from kfp import local

    mounts = [docker.types.Mount(target=str(p), source=str(p), type="bind") for p in host_paths]
    return local.DockerRunner(user=f"{os.getuid()}:{os.getgid()}", environment={"HOME": "/tmp"},
                              mounts=mounts)


def run(pipeline, pipeline_name: str, parameters: dict, pipeline_root: str, *,
        cache: bool = True, verbose: bool = False, console=None, runner=None) -> dict:
    """Run `pipeline(**parameters)` locally; write summary.json in the run folder; return it.

    `runner` is a kfp.local runner; default: SubprocessRunner in this virtual environment.
    """
    import warnings

    from kfp import local

    # The subprocess runner warns when an image name lacks "python"; the image is only
    # used by Vertex and the Docker runner, this runner uses the project's venv.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    console = console or sys.stdout
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in root.iterdir()}
    local.init(runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=cache, raise_on_error=False)
    log_path = root / f".{pipeline_name}-{int(time.time() * 1000)}.log"
    start = time.time()
    with open(log_path, "w") as log_file:
        tee = LogTee(console, log_file, verbose)
        saved = sys.stdout
        sys.stdout = tee
        # Cache hits are logged at INFO outside kfp's own logging context, where the root
        # logger would drop them: listen at INFO for the length of the run.
        root_logger = logging.getLogger()
        handler = logging.StreamHandler(tee)
        saved_level = root_logger.level
        root_logger.addHandler(handler)
        root_logger.setLevel(logging.INFO)
        try:
            pipeline(**parameters)
        finally:
            root_logger.removeHandler(handler)
            root_logger.setLevel(saved_level)
            sys.stdout = saved
            tee.flush()
    seconds = time.time() - start
    prefix = pipeline_name.replace("_", "-") + "-"  # KFP names run folders with dashes: batch_prediction
    new = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in before and p.name.startswith(prefix))
    run_dir = new[-1] if new else None
    summary = summarise(tee, run_dir, root)
    summary.update({"pipeline": pipeline_name, "parameters": parameters, "seconds": round(seconds, 3)})
    if run_dir is None:  # every task came from the cache: give the run a folder of its own
        run_dir = root / f"{pipeline_name}-{time.strftime('%Y-%m-%d-%H-%M-%S')}-cached"
        run_dir.mkdir()
        summary["run_dir"] = str(run_dir)
    final_log = run_dir / "run.log"
    log_path.replace(final_log)
    report = (summary.get("result") or {}).get("report")
    if report and Path(report).is_file():  # KFP's HTML artifact has no suffix: a browser shows its source
        shutil.copyfile(report, run_dir / "report.html")
        summary["report_path"] = str(run_dir / "report.html")
    summary["log_path"] = str(final_log)
    summary["summary_path"] = str(run_dir / "summary.json")
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
