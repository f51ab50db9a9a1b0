"""Step timing: the library's own share of a step's wall time."""

from __future__ import annotations


def timed(fn):
    """Add ``metrics["work_seconds"]``, the step's own work, to a library result.

    The local summary subtracts it from the task's wall time to show orchestration overhead
    (process start, imports, artifact hand-over).
    """
    import functools
    import time

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        result.setdefault("metrics", {})["work_seconds"] = time.perf_counter() - t0
        return result
    return wrapper
