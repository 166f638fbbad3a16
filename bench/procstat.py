"""CPU and memory of process trees, read from /proc (Linux): what the benchmark charges to the grid."""

from __future__ import annotations

import os
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def group_cpu(roots: set[int]) -> dict[int, float]:
    """CPU seconds (user+sys, plus reaped children) of every live process descended from `roots`, by pid."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (f := _stat(int(d))):  # fields after comm: state ppid pgrp ... utime(11) stime(12)
            procs[int(d)] = (int(f[1]), (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / CLK)
    out = {}
    for pid, (ppid, cpu) in procs.items():
        p = pid
        while p > 1 and p not in roots:
            p = procs.get(p, (0, 0))[0]
        if p in roots:
            out[pid] = cpu
    return out


def cpu_split(roots: set[int], before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """CPU seconds spent between two `group_cpu` readings: (the root processes, their descendants)."""
    nodes = workers = 0.0
    for pid, v in after.items():
        d = v - before.get(pid, 0.0)
        if pid in roots:
            nodes += d
        else:
            workers += d
    return nodes, workers


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()
