"""Make `python pipelines/<script>.py` import the repository's packages, not siblings.

Running a script puts its own folder first on sys.path, where `training.py` and friends
would shadow same-named modules of other libraries. Put the repository root there instead.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_here = str(ROOT / "pipelines")
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _here]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
