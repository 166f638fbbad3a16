"""The registry of fault kinds: the one place `harness chaos`, `harness run --faults` and the scenarios
read them from. A new kind of fault is one class (harness/fault.py's interface) added to FAULTS."""

from __future__ import annotations

import random
from typing import Any

from .errors import HarnessError
from .fault import Fault
from .faults_net import Bandwidth, Blackhole, Flap, Latency, Partition, Reset, SlowClose, ToxiPartition
from .faults_node import Kill, KillTwo, Pause, Restart, RestartAll

FAULTS: dict[str, type[Fault]] = {cls.name: cls for cls in (
    Kill, KillTwo, Pause, Restart, RestartAll,
    Partition, ToxiPartition, Latency, Bandwidth, Blackhole, Reset, SlowClose, Flap,
)}


def make(name: str, cluster: Any, *, rng: random.Random | None = None, **params: Any) -> Fault:
    """A fault of kind `name` on `cluster` (targets from params, else chosen with `rng` when applied)."""
    cls = FAULTS.get(name)
    if cls is None:
        raise HarnessError(f"unknown fault {name!r}; choose from {', '.join(FAULTS)}")
    return cls(cluster, rng=rng, **params)


def parse_names(text: str) -> list[str]:
    """`kill,pause,partition` -> the names, each checked against the registry."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise HarnessError(f"--faults needs fault names; choose from {', '.join(FAULTS)}")
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise HarnessError(f"unknown fault {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    return names
