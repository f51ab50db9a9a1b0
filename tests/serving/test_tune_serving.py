"""tune-serving against real `modelpress serve` subprocesses on 127.0.0.1: a small grid on the tiny
model measures every point (the current config too), writes the chosen config atomically (a
running server reloads it), reports every point; --dry-run and an unmeetable budget write nothing;
bad arguments are one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelpress.cli import main
from modelpress.deploy import repository
from modelpress.loadtest import tuning
from tests.serving.conftest import deploy_tiny, start_server, stop_server, wait_for

SHORT = dict(concurrency=4, duration_s=1.2, warmup_s=0.3, max_windows=4)
QUICK_ARGS = ["--concurrency", "2", "--duration", "0.6", "--warmup", "0.2", "--max-windows", "3",
              "--instances", "1", "--threads", "1", "--delays-us", "0"]


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    deploy_tiny(repo, tmp_path, max_batch_size=16, instances=1)  # preferred (8,), delay 0, no thread count
    return repo


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelpress", "tune-serving", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_grid_measures_every_point_and_writes_the_chosen_config_a_running_server_reloads(tmp_path, monkeypatch):
    repo = _repo(tmp_path)
    before = repository.read_config(repo, "tiny")
    server = start_server(repo, tmp_path, "--poll-seconds", "0.3", "--metrics-port", "0")
    replaced, real_replace = [], os.replace

    def spy(src, dst, *a, **k):
        if str(dst).endswith(repository.CONFIG_FILE):  # the config appears whole, from a sibling temp file
            replaced.append((Path(src), Path(dst), Path(src).read_text()))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", spy)
    lines = []
    try:
        report = tuning.tune(str(repo), "tiny", instances=[1, 2], threads=[1], delays_us=[0, 500], preferred=[(8,)],
                             report_dir=str(tmp_path / "report"), log=lines.append, **SHORT)
        after = repository.read_config(repo, "tiny")
        chosen = report["chosen"]["settings"]

        def served():
            status, body = server.get("/v2/models/tiny/config")
            doc = json.loads(body) if status == 200 else {}
            threads = doc.get("parameters", {}).get(tuning.THREAD_PARAM, {}).get("string_value")
            return threads == str(chosen["threads"]) and doc
        assert wait_for(served, 20), f"the running server did not reload the new config:\n{server.log.read_text()}"
        doc = served()
    finally:
        stop_server(server)

    # every point measured: the current config (1 instance x 2 threads, delay 0) and the 4 of the grid
    points = report["points"]
    assert len(points) == 5 and points[0]["default"] and points[0]["settings"]["threads"] == 2
    grid = {(p["settings"]["instances"], p["settings"]["max_queue_delay_us"]) for p in points[1:]}
    assert grid == {(1, 0), (1, 500), (2, 0), (2, 500)}
    for p in points:
        assert p["failed"] is None and p["ok"] > 0 and p["throughput_rps"] > 0 and p["errors"] == {}
        assert {"p50", "p95", "p99"} <= set(p["latency_ms"]) and 3 <= len(p["windows"]) <= 4
        assert isinstance(p["stable"], bool) and p["settings"]["cores"] <= len(os.sched_getaffinity(0))
    assert sum(p["chosen"] for p in points) == 1 and report["vs_default"]["throughput_ratio"] > 0
    best = max(p["throughput_rps"] for p in points)
    noise = max(p["noise"] or 0 for p in points)
    assert report["chosen"]["throughput_rps"] >= best * (1 - noise) - 1e-9
    assert "req/s" in report["why"] and "ms" in report["why"]
    assert report["machine"]["cpu_model"] and report["machine"]["usable_cores"] >= 1

    # the chosen values written, everything else kept; atomically, via a temp file in the model folder
    assert report["written"] and len(replaced) == 1
    src, dst, text = replaced[0]
    assert src.parent == dst.parent == repo / "tiny" and src.name.startswith(".") and not src.exists()
    assert text == (repo / "tiny" / repository.CONFIG_FILE).read_text()
    assert [f.name for f in (repo / "tiny").iterdir() if f.name.startswith(".")] == []
    assert sum(g.count for g in after.instance_group) == chosen["instances"]
    assert after.parameters[tuning.THREAD_PARAM].string_value == str(chosen["threads"])
    assert after.dynamic_batching.max_queue_delay_microseconds == chosen["max_queue_delay_us"]
    assert list(after.dynamic_batching.preferred_batch_size) == [8]
    assert after.input == before.input and after.output == before.output
    assert after.version_policy == before.version_policy and after.max_batch_size == before.max_batch_size
    assert after.parameters["task"] == before.parameters["task"]
    assert doc["instance_group"][0]["count"] == chosen["instances"]
    assert doc.get("dynamic_batching", {}).get("max_queue_delay_microseconds", 0) == chosen["max_queue_delay_us"]

    # the report: JSON with every point, the table, the plot; progress lines with figures and an ETA
    files = {k: Path(v) for k, v in report["files"].items()}
    saved = json.loads(files["json"].read_text())
    assert len(saved["points"]) == 5 and saved["chosen"]["settings"] == chosen and saved["default"]["default"]
    assert files["markdown"].read_text().count("\n| ") == 6 and "**chosen**" in files["markdown"].read_text()
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(ln.startswith("[") for ln in lines) == 5 and "ETA" in lines[1] and "req/s" in lines[1]


# slow: the grid test measures and writes; this only checks the flag
@pytest.mark.slow
def test_dry_run_measures_and_reports_but_writes_nothing(tmp_path):
    repo = _repo(tmp_path)
    config = repo / "tiny" / repository.CONFIG_FILE
    text, mtime = config.read_text(), config.stat().st_mtime_ns
    proc = _cli(str(repo), "--model", "tiny", "--dry-run", "--report", "out", *QUICK_ARGS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[1/2] current config: " in proc.stdout and "[2/2] 1 inst x 1 thr" in proc.stdout
    assert "dry run: nothing written" in proc.stdout
    assert config.read_text() == text and config.stat().st_mtime_ns == mtime
    saved = json.loads((tmp_path / "out" / "tuning.json").read_text())
    assert saved["dry_run"] and not saved["written"] and len(saved["points"]) == 2 and saved["chosen"]


def test_a_budget_no_point_meets_writes_nothing_and_names_the_closest(tmp_path):
    repo = _repo(tmp_path)
    config = repo / "tiny" / repository.CONFIG_FILE
    text = config.read_text()
    proc = _cli(str(repo), "--model", "tiny", "--p99-budget-ms", "0.001", *QUICK_ARGS, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no setting met the p99 budget of 0.001 ms: the best p99 seen was" in proc.stderr
    assert "inst x" in proc.stderr and "nothing written" in proc.stderr
    assert config.read_text() == text
    (report,) = (tmp_path / "tune-serving").glob("tiny-*/tuning.json")  # the default report folder
    saved = json.loads(report.read_text())
    assert saved["chosen"] is None and not saved["written"] and len(saved["points"]) == 2


@pytest.mark.parametrize("args, says", [
    (["--instances", "0"], "bad grid value: --instances"),
    (["--threads", str(len(os.sched_getaffinity(0)) + 1)], "exceeds the"),
    (["--instances", "1,x"], "comma-separated integers"),
    (["--delays-us=-5"], "bad grid value: --delays-us"),
    (["--preferred-batch-sizes", "8", "64"], "max_batch_size 16"),
    (["--duration", "abc"], "invalid float value"),
    (["--search", "slow"], "invalid choice"),
    (["--rate", "0"], "--rate must be > 0"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
    (["--model", "nope"], "model 'nope' is not in the repository"),
])
def test_bad_arguments_are_refused_with_one_line(tmp_path, capsys, args, says):
    repo = _repo(tmp_path)
    text = (repo / "tiny" / repository.CONFIG_FILE).read_text()
    argv = ["tune-serving", str(repo), *(["--model", "tiny"] if "--model" not in args else []), *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("modelpress tune-serving: error: ")
    assert (repo / "tiny" / repository.CONFIG_FILE).read_text() == text


def test_unknown_repository_and_missing_model_are_one_line(tmp_path, capsys):
    assert main(["tune-serving", str(tmp_path / "none"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"modelpress tune-serving: error: no model repository at {tmp_path / 'none'}"
    with pytest.raises(SystemExit):
        main(["tune-serving", str(tmp_path)])
    assert "--model" in capsys.readouterr().err


def _point(tput, p99, cores, noise=0.02, errors=None):
    return {"throughput_rps": tput, "latency_ms": {"p99": p99}, "settings": {"cores": cores}, "noise": noise,
            "errors": errors or {}, "ok": 10, "failed": None}


def test_ranking_budget_errors_and_ties_within_the_noise():
    best, close, far = _point(1000, 9, 2, noise=0.05), _point(960, 8, 1), _point(900, 1, 1)
    broken, slow = _point(2000, 1, 1, errors={"503": 3}), _point(1500, 50, 1)
    chosen, ties, top = tuning.rank([best, close, far, broken, slow], budget_ms=10)
    assert top is best and chosen is close and ties == [best, close]      # 4% apart, 5% noise: fewer cores
    assert tuning.rank([best, close], budget_ms=8.5)[0] is close          # over budget: out
    assert tuning.rank([best, _point(900, 9, 1)], budget_ms=0)[0] is best  # 10% apart: not a tie
    assert tuning.rank([slow], budget_ms=10) == (None, [], None)


def test_grid_stays_within_the_cores_and_quick_search_steps_one_axis():
    axes = {"instances": [1, 2, 4], "threads": [1, 2, 4], "delays_us": [0, 500], "preferred": [(8,), ()]}
    points = tuning.grid(axes, cores=4)
    assert all(s.cores <= 4 for s in points) and len(points) == len(set(points))
    assert len([s for s in points if s.delay_us == 0]) == 6        # delay 0: preferred sizes change nothing
    assert len(points) == 6 + 6 * 2
    here = tuning.Setting(2, 1, 0, (8,))
    steps = tuning.neighbours(here, axes, cores=4)
    assert set(steps) == {tuning.Setting(1, 1, 0, (8,)), tuning.Setting(4, 1, 0, (8,)),
                          tuning.Setting(2, 2, 0, (8,)), tuning.Setting(2, 1, 500, (8,))}


def test_quick_search_climbs_one_step_at_a_time_to_the_best_point(tmp_path, monkeypatch):
    """The hill-climb's path, with figures made up instead of measured: 2 instances of 1 thread serve
    most, a queue delay costs throughput."""
    repo = _repo(tmp_path)  # current config: 1 instance x 2 threads (2 cores), delay 0

    def fake(self, s, config_text=None, prefix="", total="?", remaining=0):
        if s not in self.points:
            tput = 1000 + 500 * (s.instances == 2) - (s.delay_us or 0) / 10
            self.points[s] = {"label": s.label(), "settings": s.as_dict(), "failed": None, "throughput_rps": tput,
                              "rows_per_s": tput, "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0}, "ok": 100,
                              "requests": 100, "errors": {}, "stable": True, "noise": 0.02, "windows": [],
                              "pooled_windows": [0, 0]}
        return self.points[s]

    monkeypatch.setattr(tuning, "usable_cores", lambda: 2)
    monkeypatch.setattr(tuning._Run, "measure", fake)
    report = tuning.tune(str(repo), "tiny", search="quick", instances=[1, 2], threads=[1, 2], delays_us=[0, 500],
                         preferred=[(8,)], dry_run=True, log=lambda line: None)
    path = [(p["settings"]["instances"], p["settings"]["threads"], p["settings"]["max_queue_delay_us"])
            for p in report["points"]]
    # from (1, 2, 0): its neighbours; a tie at 1000 req/s goes to 1 core; then 2 instances; then no better step
    assert path == [(1, 2, 0), (1, 1, 0), (1, 2, 500), (2, 1, 0), (1, 1, 500), (2, 1, 500)]
    assert report["chosen"]["settings"]["instances"] == 2 and report["chosen"]["settings"]["threads"] == 1
    assert not report["written"] and "2 inst x 1 thr" in report["config_after"] + report["why"]


def test_the_next_deploy_keeps_what_tuning_measured(tmp_path):
    repo = _repo(tmp_path)
    path = repo / "tiny" / repository.CONFIG_FILE
    before = path.read_text()
    tuned = tuning.Setting(instances=2, threads=1, delay_us=500, preferred=(4,))
    tuning.write_config(path, tuning._config_text(repository.read_config(repo, "tiny"), tuned), before)
    untuned = tmp_path / "untuned"
    deploy_tiny(untuned, tmp_path, max_batch_size=16, instances=1)  # the same model, never tuned
    for target in (repo, untuned):
        deploy_tiny(target, tmp_path, seed=1, max_batch_size=16, instances=1)  # a retrained version
    kept = repository.read_config(repo, "tiny")
    assert repository.versions(repo, "tiny") == [1, 2]
    assert tuning.current_setting(kept, cores=2) == tuned and "tuned_by" in kept.parameters
    fresh = repository.read_config(untuned, "tiny")  # without the marker the deploy's defaults stand
    assert tuning.current_setting(fresh, cores=2) == tuning.Setting(1, 2, 0, (8,))
    assert "tuned_by" not in fresh.parameters
