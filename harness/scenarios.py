"""The fault scenarios both backends are tested with (tests/test_harness_local.py, tests/docker/...).

Each takes a cluster that is up (5 nodes, R=3, one runner each), runs a workload of short sleep jobs,
injects its fault while the queues are full, undoes it, drains, and returns a `Outcome` with the
checker's verdict and the promotions the nodes report in GET /state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jobgrid.history import CheckResult, HistoryRecorder

from .backend import apply_partition, wait_for
from .errors import HarnessError
from .workload import promotions, remember_ids, run_workload, judge


@dataclass
class Outcome:
    verdict: CheckResult
    promotions: list[dict]
    victims: list[str] = field(default_factory=list)    # node ids the fault took away
    timing: dict = field(default_factory=dict)

    def promoted_for(self, node_id: str) -> list[dict]:
        return [p for p in self.promotions if p.get("dead") == node_id]



def _with_fault(cluster: Any, fault: Callable[[], list[str]], undo: Callable[[list[str]], None], *,
                jobs: int = 150, seconds: float = 0.2, fault_at: int = 100, drain: float = 60.0) -> Outcome:
    rec = HistoryRecorder()
    acked_enough = threading.Event()
    result: dict = {}

    def progress(acked: int, _done: int) -> None:
        if acked >= fault_at:
            acked_enough.set()

    def work() -> None:
        try:
            result["timing"] = run_workload([n.url for n in cluster.nodes], cluster.token, rec, jobs=jobs,
                                            kind="sleep", drain_timeout=drain, on_progress=progress)
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    remember_ids(cluster)
    th = threading.Thread(target=work, daemon=True)
    th.start()
    if not acked_enough.wait(60):
        raise HarnessError(f"workload did not get {fault_at} acknowledgements in 60 s: {result}")
    victims = fault()
    remember_ids(cluster)
    try:
        for vid in victims:
            wait_for(lambda vid=vid: any(p.get("dead") == vid for p in promotions(cluster)), 60,
                     f"a promotion of {vid}'s backups")
    finally:
        undo(victims)
    th.join(drain + 120)
    if th.is_alive():
        raise HarnessError("workload did not finish")
    if "error" in result:
        raise result["error"]
    return Outcome(judge(rec.ops), promotions(cluster), victims, result.get("timing", {}))


def _owns_queued_jobs(cluster: Any, node: Any, at_least: int = 2, timeout: float = 30.0) -> None:
    """Wait until `node` owns queued jobs: a fault that takes a node with an empty queue promotes nothing
    (its clients' submissions may still be in flight when the workload reaches `fault_at` acknowledgements)."""
    def queued() -> bool:
        try:
            return cluster.get(node, "/state").get("counts", {}).get("queued", 0) >= at_least
        except Exception:  # noqa: BLE001 - busy node: ask again
            return False
    wait_for(queued, timeout, f"{node.name} to own queued jobs")


def kill_two(cluster: Any) -> Outcome:
    """Kill two of five nodes (R=3: every job keeps at least one replica)."""
    def fault() -> list[str]:
        victims = cluster.nodes[1:3]
        for n in victims:
            _owns_queued_jobs(cluster, n)
        for n in victims:
            cluster.kill(n)
        return [n.node_id for n in victims]
    return _with_fault(cluster, fault, lambda _v: None)


def partition_halves(cluster: Any) -> Outcome:
    """[n1 n2] | [n3 n4 n5] while jobs sit on both sides; the majority promotes the minority's backups."""
    def fault() -> list[str]:
        apply_partition(cluster, "halves")
        return [n.node_id for n in cluster.nodes[:2]]

    def undo(_v: list[str]) -> None:
        cluster.heal()

    out = _with_fault(cluster, fault, undo)
    return out


def pause_one(cluster: Any, failure_timeout: float = 2.0) -> Outcome:
    """SIGSTOP / docker pause one node for three failure timeouts, then let it go on."""
    victim = cluster.nodes[3]

    def fault() -> list[str]:
        cluster.pause(victim)
        return [victim.node_id]

    def undo(_v: list[str]) -> None:
        time.sleep(0)  # the promotion was awaited: the pause already outlasted the failure timeout
        cluster.resume(victim)

    return _with_fault(cluster, fault, undo)


def kill_restart(cluster: Any) -> Outcome:
    """Kill one node, wait for its backups to be promoted, start it again on its data."""
    victim = cluster.nodes[4]

    def fault() -> list[str]:
        _owns_queued_jobs(cluster, victim)
        cluster.kill(victim)
        return [victim.node_id]

    def undo(_v: list[str]) -> None:
        cluster.restart(victim)

    out = _with_fault(cluster, fault, undo)
    cluster.wait_converged(60)
    return out


SCENARIOS = {"kill_two": kill_two, "partition_halves": partition_halves, "pause_one": pause_one,
             "kill_restart": kill_restart}
