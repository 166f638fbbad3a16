"""The nemesis of `harness run`: faults from the registry (harness/faults.py) on a schedule, in a thread.

Two schedules, as Jepsen's nemesis packages have: a fixed *plan* (each fault gets an equal slot of the
run, as `--kill 2 --partition halves` asks), or a seeded *random mix* of named kinds (`--faults
kill,pause,latency`): one fault at a time, held for a random while, healed, a random gap, the next.
One at a time keeps the rule "never more than R-1 nodes down, always a majority up" easy to see.
Every fault's window (monotonic start/end, nodes, description) is kept for the verdict and the plots.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import HarnessError
from .fault import Fault
from .faults import FAULTS, make

INSTANT = ("restart", "restart-all")  # faults that are over once applied: no hold


class Nemesis:
    def __init__(self, cluster: Any, *, plan: Sequence[Fault] = (), names: Sequence[str] = (),
                 params: dict[str, dict] | None = None, duration: float = 20.0, seed: int = 7,
                 hold: tuple[float, float] = (4.0, 8.0), gap: tuple[float, float] = (2.0, 5.0),
                 log: Callable[[str], None] = print) -> None:
        if plan and names:
            raise HarnessError("a nemesis has a fixed plan or a random mix of kinds, not both")
        self.cluster = cluster
        self.plan = list(plan)
        self.names = list(names)
        self.params = params or {}
        self.duration = duration
        self.seed = seed
        self.rng = random.Random(seed)
        self.hold, self.gap = hold, gap
        self.log = log
        self.windows: list[dict] = []
        self.current: Fault | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self.t0 = time.monotonic()
        self._check_safety()

    def _check_safety(self) -> None:
        """Refuse kinds that would take down more nodes than the grid can lose (R-1, and a majority kept)."""
        n, r = len(self.cluster.nodes), getattr(self.cluster, "replicas", 3)
        can_lose = min(r - 1, n - (n // 2 + 1))
        if "kill2" in self.names and can_lose < 2:
            raise HarnessError(f"kill2 needs a grid that can lose two nodes: {n} nodes with R={r} can lose {can_lose}")
        for name in self.names:
            if name not in FAULTS:
                raise HarnessError(f"unknown fault {name!r}; choose from {', '.join(FAULTS)}")

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    def _sleep_until(self, t: float) -> bool:
        """Sleep until monotonic time t; False if the nemesis was stopped meanwhile."""
        return not self._stop.wait(max(0.0, t - time.monotonic()))

    def _run(self) -> None:
        try:
            self._run_plan() if self.plan else self._run_mix()
        except BaseException as e:  # noqa: BLE001 - reported by the run
            self.error = e
            self.log(f"[red]nemesis error: {e}[/red]")

    def _run_plan(self) -> None:
        """Each fault in its slot of the run, held for 60% of a slot; a slow heal (restarting nodes) delays
        the next fault rather than shortening it."""
        slot = 0.9 / len(self.plan)
        for k, fault in enumerate(self.plan):
            if not self._sleep_until(self.t0 + (0.05 + k * slot) * self.duration):
                return
            self._on(fault)
            if not self._sleep_until(time.monotonic() + slot * 0.6 * self.duration):
                return
            self._off()

    def join(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the schedule to end by itself."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run_mix(self) -> None:
        end = self.t0 + self.duration
        while time.monotonic() < end:
            if not self._sleep_until(min(end, time.monotonic() + self.rng.uniform(*self.gap))):
                return
            if time.monotonic() >= end:
                return
            name = self.rng.choice(self.names)
            fault = make(name, self.cluster, rng=random.Random(self.rng.random()), **self.params.get(name, {}))
            self._on(fault)
            if name not in INSTANT and not self._sleep_until(time.monotonic() + self.rng.uniform(*self.hold)):
                return
            self._off()

    def _on(self, fault: Fault) -> None:
        w = {"kind": fault.name, "start": time.monotonic(), "end": None}
        self.windows.append(w)
        self.current = fault
        rec = fault.apply()
        w.update(nodes=rec.get("nodes", []), description=rec["description"])
        self.log(f"nemesis: {rec['description']}")

    def _off(self) -> None:
        fault, self.current = self.current, None
        if fault is None:
            return
        fault.heal()
        self.windows[-1]["end"] = time.monotonic()
        if "flips" in fault.record:
            self.windows[-1]["flips"] = fault.record["flips"]
        self.log(f"nemesis: healed {fault.describe()}")

    def stop_and_heal(self) -> None:
        """Stop the schedule, heal the fault in force, then heal the cluster (partitions, toxics, nodes)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(180)
        if self.current is not None:
            self._off()
        for w in self.windows:
            if w["end"] is None:
                w["end"] = time.monotonic()
        heal_cluster(self.cluster)


def heal_cluster(cluster: Any) -> None:
    """Resume paused nodes, remove partitions and toxics, start killed nodes again."""
    for n in [n for n in cluster.nodes if n.state == "paused"]:
        cluster.resume(n)
    try:
        cluster.heal()
    except HarnessError:
        pass
    killed = [n for n in cluster.nodes if n.state == "killed"]
    if killed:
        cluster.restart_many(killed)
