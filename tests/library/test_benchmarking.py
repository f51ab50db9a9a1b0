import time

import numpy as np
import pytest

from modelpress import benchmarking


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


def test_stable_variant_stops_after_three_agreeing_windows():
    steady, _ = _sleeper(lambda n: 1.0)
    out = benchmarking.measure_windows({"steady": steady}, np.zeros(1), window_seconds=0.1,
                                       max_windows=10, warmup=2, log=None)
    assert out["steady"]["stable"] is True
    assert 3 <= out["steady"]["windows"] < 10  # stops as soon as three windows agree
    assert out["steady"]["p50"] == pytest.approx(1.0, rel=0.3)


def test_unstable_variant_is_flagged_not_failed_and_windows_are_bounded():
    # latency doubles every ~50 calls: windows never agree within 10%
    drifting, _ = _sleeper(lambda n: 0.5 * (2 ** (n // 50)) if n < 300 else 16)
    steady, _ = _sleeper(lambda n: 0.5)
    out = benchmarking.measure_windows({"drifting": drifting, "steady": steady}, np.zeros(1),
                                       window_seconds=0.02, max_windows=4, warmup=0, log=None)
    assert out["drifting"]["stable"] is False and out["drifting"]["windows"] == 4
    # interleaved: the steady variant ran as many windows, and is stable
    assert out["steady"]["windows"] == 4 and out["steady"]["stable"] is True


def test_latency_is_interleaved_round_by_round():
    order = []
    runners = {k: (lambda x, k=k: order.append(k)) for k in "ab"}
    benchmarking.measure_latency(runners, np.zeros(1), rounds=3, iters=2, warmup=0, log=None)
    assert "".join(order) == "aabbaabbaabb"
