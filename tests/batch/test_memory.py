"""Memory follows the chunk, not the input: scoring a 10x larger CSV raises peak memory by < 20 %."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.batch.conftest import write_digits_csv

ROOT = Path(__file__).resolve().parents[2]
# Peak memory is the kernel's high-water mark of resident memory (VmHWM in /proc/self/status) of a
# fresh process per input size:
# - resident memory counts everything the job touches: numpy buffers, Python objects, ONNX Runtime's
#   C++ arena; tracemalloc sees only Python's allocator (not ORT's) and slows the loop several times;
# - one process per size, so the smaller run's peak cannot hide the larger's, and the pytest process
#   (torch, trained models: 500+ MB) is not in the figure;
# - VmHWM rather than getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child started
#   from this big process reports the parent's size (measured: 580 MB for a 78 MB job). VmHWM belongs
#   to the new image only.
PEAK = """
import json, sys
from modelpress import batch

def high_water_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))

imported = high_water_kb()
summary = batch.predict(sys.argv[1], sys.argv[2], sys.argv[3],
                        batch.BatchSettings(chunk_rows=1000, batch_size=64, threads=1), log=lambda line: None)
print(json.dumps({"imported_kb": imported, "peak_kb": high_water_kb(), "rows": summary["rows_predicted"]}))
"""


def _peak(source: Path, model: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK, str(source), str(model), str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_ten_times_larger_input_raises_peak_memory_by_less_than_a_fifth(tmp_path, served):
    small = _peak(write_digits_csv(tmp_path / "small.csv", 4000), served.onnx["tab"], tmp_path / "small")
    large = _peak(write_digits_csv(tmp_path / "large.csv", 40000), served.onnx["tab"], tmp_path / "large")
    assert (small["rows"], large["rows"]) == (4000, 40000)
    assert large["peak_kb"] < 1.2 * small["peak_kb"], (small, large)
    # stricter: what scoring itself adds above the imports grows by less than a fifth too (holding the
    # 40,000 rows as Python floats would add about 80 MB to a job of about 40 MB)
    added_small, added_large = small["peak_kb"] - small["imported_kb"], large["peak_kb"] - large["imported_kb"]
    assert added_large < 1.2 * added_small, (small, large)
