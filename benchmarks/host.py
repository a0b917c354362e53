"""What machine a benchmark ran on, in one line: timings from different CPUs do not compare
(the same step took 0.37 s on an AMX Intel machine and about 1.1 s on an AVX2-only AMD one),
so every result names its CPU model and the vector units torch can use on it."""

from __future__ import annotations

import os
from pathlib import Path

# The instruction sets that change torch's CPU speed most, widest first.
_ISA = ("amx_bf16", "avx512f", "avx2")


def cpu_model(cpuinfo: str | None = None) -> str:
    """``"AMD EPYC (avx2)"``-style: the model name and the widest vector unit present."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return "unknown CPU"
    name, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown CPU":
            name = " ".join(value.split())
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    isa = next((i for i in _ISA if i in flags), None)
    return f"{name} ({isa})" if isa else name


def cpus_line() -> str:
    """``"2 CPU cores, AMD EPYC (avx2)"``."""
    return f"{os.cpu_count()} CPU cores, {cpu_model()}"
