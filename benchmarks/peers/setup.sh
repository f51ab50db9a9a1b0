#!/usr/bin/env bash
# The peers' own environment for `benchmarks/serving.py --peers`: NVIDIA Triton (the
# tritonserver that nvidia-pytriton bundles) and KServe's Python model server. Not a product
# dependency: it lives in build/peers-venv, apart from .venv.
#
#   bash benchmarks/peers/setup.sh            # creates build/peers-venv if missing
#   PYTHON=/path/to/python3.11 PEERS_VENV=DIR bash benchmarks/peers/setup.sh
#
# onnxruntime is installed at the project's pin (pyproject.toml), so every server runs the same
# ONNX Runtime build; numpy is whatever pip picks under nvidia-pytriton's numpy<2 (the project
# pins 2.x; the version is recorded in the results). The Python must be a shared-library build
# (pyenv's and Debian's are): Triton's Python-backend stub links libpython from its LIBDIR.
# About 740 MB; under a minute with a fast link.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/build/peers-venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
PYTRITON_VERSION=0.7.0
KSERVE_VERSION=0.21.0

# each peer in its own process: kserve's and tritonclient's generated protos both define the
# `inference` package, so one interpreter cannot import both
ready() { "$VENV/bin/python" -c 'import pytriton.triton, onnxruntime' && "$VENV/bin/python" -c 'import kserve'; }
if [ -x "$VENV/bin/python" ] && ready 2>/dev/null; then
    echo "$VENV is ready"; exit 0
fi
"$PYTHON" -c 'import sys, sysconfig
if sys.version_info[:2] != (3, 11): sys.exit("the peers venv needs Python 3.11 (the project'"'"'s); set PYTHON=")
if not sysconfig.get_config_var("Py_ENABLE_SHARED"): sys.exit(sys.executable + " is not a shared-library build: Triton'"'"'s Python stub needs libpython")'
pin() {  # the version pyproject.toml pins for $1
    "$PYTHON" - "$1" "$ROOT/pyproject.toml" <<'PY'
import sys, tomllib
name, path = sys.argv[1], sys.argv[2]
for dep in tomllib.load(open(path, "rb"))["project"]["dependencies"]:
    if dep.split("==")[0].split("[")[0] == name:
        print(dep); break
else:
    sys.exit(f"{name} is not pinned in {path}")
PY
}
ORT="$(pin onnxruntime)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "nvidia-pytriton==$PYTRITON_VERSION" "kserve==$KSERVE_VERSION" "$ORT" "numpy<2"
ready
"$VENV/bin/python" -c 'from importlib.metadata import version as v
print("peers venv:", ", ".join(f"{p} {v(p)}" for p in ("nvidia-pytriton", "kserve", "onnxruntime", "numpy")))'
du -sh "$VENV"
