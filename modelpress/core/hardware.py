"""The machine a figure was measured on: CPU model and flags, int8 dot-product support."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_vnni(flags: list[str] | None = None) -> bool:
    flags = set(cpu_flags() if flags is None else flags)
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})
