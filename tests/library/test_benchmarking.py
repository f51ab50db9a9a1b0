import time

import numpy as np
import pytest

from modelpress.selection import benchmarking


def _sleeper(ms_by_call):
    calls = {"n": 0}

    def run(_x):
        ms = ms_by_call(calls["n"])
        calls["n"] += 1
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:  # busy-wait: sleep() granularity is too coarse
            pass
    return run, calls


def test_percentiles():
    p = benchmarking.percentiles(list(range(1, 101)))
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01) and p["n"] == 100
    assert benchmarking.percentiles([])["n"] == 0


def test_stability_rule():
    # (p50 ms, calls/s) per window
    assert benchmarking.is_stable([(1.0, 1000), (1.05, 980), (0.98, 1010)])
    assert not benchmarking.is_stable([(1.0, 1000), (1.05, 980)])  # fewer than three windows
    assert not benchmarking.is_stable([(1.0, 1000), (1.2, 830), (1.0, 1000)])  # latency spread 20%
    assert not benchmarking.is_stable([(1.0, 1000), (1.0, 700), (1.0, 1000)])  # throughput spread
    # only the last three windows count: an early outlier is forgotten
    assert benchmarking.is_stable([(5.0, 200), (1.0, 1000), (1.02, 990), (1.01, 995)])
    assert not benchmarking.is_stable([(1.0, 1000), (1.1, 905), (1.0, 1000)], tolerance=0.05)


def test_windows_are_bounded_interleaved_and_flag_instability():
    # latency doubles every 40 calls: windows never agree within 10%
    drifting, _ = _sleeper(lambda n: 0.25 * (2 ** min(n // 40, 6)))
    steady, steady_calls = _sleeper(lambda n: 0.5)
    out = benchmarking.measure_windows({"drifting": drifting, "steady": steady}, np.zeros(1),
                                       window_seconds=0.02, max_windows=4, warmup=0, log=None)
    assert out["drifting"]["stable"] is False and out["drifting"]["windows"] == 4
    assert out["steady"]["windows"] == 4  # interleaved: both ran every window
    assert len(out["steady"]["window_p50_ms"]) == 4
    assert out["steady"]["n"] > 0 and out["steady"]["p50"] == pytest.approx(0.5, rel=0.5)


def test_latency_is_interleaved_round_by_round():
    order = []
    runners = {k: (lambda x, k=k: order.append(k)) for k in "ab"}
    benchmarking.measure_latency(runners, np.zeros(1), rounds=3, iters=2, warmup=0, log=None)
    assert "".join(order) == "aabbaabbaabb"
