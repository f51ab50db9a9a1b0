"""benchmarks/serving_peers.py: the targets it checks, its message without the peers venv, and (where
build/peers-venv exists: `bash benchmarks/peers/setup.sh`) the smoke check: Triton (pytriton) and
KServe start, answer one v2 binary infer with ONNX Runtime's own logits, and stop."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "benchmarks"))  # after the project: its text.py etc. shadow nothing

import serving_peers as sp  # noqa: E402


def _row(rps: float, p50: float, p99: float) -> dict:
    return {"pooled": {"throughput_rps": rps, "latency_ms": {"p50": p50, "p99": p99}}}


def test_targets_measured_met_and_not_measured():
    levels = {"16": {sp.HTTP: _row(900, 17, 30), sp.TRITON: _row(500, 30, 40), sp.KSERVE: _row(700, 20, 25)},
              "1": {sp.HTTP: _row(500, 1.4, 2), sp.BARE: _row(900, 1.14, 1.3)}}
    got = {t["target"]: t for t in sp.targets(levels)}
    triton = got[f"c=16 throughput, modelpress HTTP / {sp.TRITON}"]
    assert triton["measured"] == pytest.approx(1.8) and triton["met"] is True
    kserve = got[f"c=16 throughput, modelpress HTTP / {sp.KSERVE}"]
    assert kserve["measured"] == pytest.approx(900 / 700) and kserve["met"] is False
    assert got[f"c=16 p99 ms, modelpress HTTP minus {sp.KSERVE}"]["met"] is False       # 30 > 25
    assert got[f"c=1 p50 ms, {sp.HTTP} minus bare session.run"]["measured"] == pytest.approx(0.26)
    grpc = got[f"c=1 p50 ms, {sp.GRPC} minus bare session.run"]
    assert grpc["measured"] is None and grpc["met"] is None                            # no gRPC series


def test_missing_peers_venv_names_the_command(tmp_path):
    with pytest.raises(SystemExit, match="benchmarks/peers/setup.sh"):
        sp.peers_python(tmp_path / "peers-venv")


@pytest.mark.skipif(not (sp.PEERS_VENV / "bin" / "python").exists(),
                    reason="build/peers-venv absent (bash benchmarks/peers/setup.sh creates it)")
def test_smoke_each_server_answers_and_stops(tmp_path, capsys):
    assert sp.main(["--peers", "--smoke", "--model", str(tmp_path / "none"), "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in (sp.HTTP, sp.TRITON, sp.KSERVE):
        assert f"smoke {name}: ready" in out and f"smoke {name}: stopped" in out
    if sp.serving.modelpress_grpc_flag() and hasattr(sp.loadtest, "GrpcTarget"):
        assert f"smoke {sp.GRPC}: ready" in out    # the same modelpress process, over gRPC
    assert "WRONG" not in out
