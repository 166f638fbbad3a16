"""The fault scenarios both backends are tested with (tests/test_harness_local.py, tests/docker/...).

Each takes a cluster that is up (5 nodes, R=3, one runner each), runs a recorded workload, applies one
fault from the registry (harness/faults.py) once enough submissions are acknowledged, waits for what
the scenario is about (a promotion, a hold), heals, drains, and returns an `Outcome`: the checker's
verdict, the promotions the nodes report in GET /state, submit latencies and ring changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .backend import wait_for
from .errors import HarnessError
from .fault import Fault
from .faults import make
from .history import CheckResult, HistoryRecorder
from .workload import judge, promotions, remember_ids, run_workload


@dataclass
class Outcome:
    verdict: CheckResult
    promotions: list[dict]
    victims: list[str] = field(default_factory=list)    # node ids the fault took away
    timing: dict = field(default_factory=dict)
    ring_changes: int = 0                                # epochs the ring moved through during the run
    fault: dict = field(default_factory=dict)            # the fault's record

    def promoted_for(self, node_id: str) -> list[dict]:
        return [p for p in self.promotions if p.get("dead") == node_id]

    def submit_latency(self, q: float) -> float:
        """The q-quantile of acknowledged submissions' latency, seconds."""
        lat = sorted(d for _, d in self.timing.get("latencies", []))
        return lat[min(len(lat) - 1, int(len(lat) * q))] if lat else 0.0

    def submit_errors(self) -> list[str]:
        return self.timing.get("submit_errors", [])


def _epoch(cluster: Any) -> int:
    return max((st.get("epoch", 0) for st in cluster.states().values()), default=0)


def with_fault(cluster: Any, fault: Fault, *, jobs: int = 150, kind: str = "sleep", rate: float | None = None,
               fault_at: int = 100, promoted: bool = True, hold: float = 0.0,
               before: Callable[[], None] | None = None, drain: float = 60.0, client_timeout: float = 30.0) -> Outcome:
    """Run the workload; at `fault_at` acknowledgements (before the first submission if 0) apply `fault`; wait for the promotion of each node
    it took away (`promoted`) and `hold` seconds; heal; drain; judge."""
    rec = HistoryRecorder()
    acked_enough = threading.Event()
    result: dict = {}

    def progress(acked: int, _done: int) -> None:
        if acked >= fault_at:
            acked_enough.set()

    def work() -> None:
        try:
            result["timing"] = run_workload(cluster.client_urls(), cluster.token, rec, jobs=jobs, kind=kind,
                                            rate=rate, drain_timeout=drain, on_progress=progress,
                                            timeout=client_timeout)
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    remember_ids(cluster)
    epoch0 = _epoch(cluster)
    th = threading.Thread(target=work, daemon=True)
    if fault_at <= 0:  # the fault is in force before the first submission
        fault.apply()
    th.start()
    if fault_at > 0:
        if not acked_enough.wait(120):
            raise HarnessError(f"workload did not get {fault_at} acknowledgements in 120 s: {result}")
        if before is not None:
            before()
        fault.apply()
    victims = [n.node_id for n in cluster.nodes if n.name in fault.down()]
    remember_ids(cluster)
    try:
        if promoted:
            for vid in victims:
                wait_for(lambda vid=vid: any(p.get("dead") == vid for p in promotions(cluster)), 60,
                         f"a promotion of {vid}'s backups")
        if hold:
            time.sleep(hold)
    finally:
        fault.heal()
    th.join(drain + 180)
    if th.is_alive():
        raise HarnessError("workload did not finish")
    if "error" in result:
        raise result["error"]
    timing = result.get("timing", {})
    timing["submit_errors"] = [op.get("error", "") for op in rec.ops if op.get("type") == "info"]
    return Outcome(judge(rec.ops), promotions(cluster), victims, timing, _epoch(cluster) - epoch0, fault.record)


def _owns_queued_jobs(cluster: Any, node: Any, at_least: int = 2, timeout: float = 30.0) -> None:
    """Wait until `node` owns queued jobs: a fault that takes a node with an empty queue promotes nothing
    (its clients' submissions may still be in flight when the workload reaches `fault_at` acknowledgements)."""
    def queued() -> bool:
        try:
            return cluster.get(node, "/state").get("counts", {}).get("queued", 0) >= at_least
        except Exception:  # noqa: BLE001 - busy node: ask again
            return False
    wait_for(queued, timeout, f"{node.name} to own queued jobs")


def _nodes(cluster: Any, *idx: int) -> list[Any]:
    return [cluster.nodes[i] for i in idx]


# ---- process faults ------------------------------------------------------------------------------------------
def kill_two(cluster: Any) -> Outcome:
    """Kill two of five nodes (R=3: every job keeps at least one replica)."""
    victims = _nodes(cluster, 1, 2)
    fault = make("kill", cluster, nodes=[n.name for n in victims], stay_down=True)
    return with_fault(cluster, fault, before=lambda: [_owns_queued_jobs(cluster, n) for n in victims])


def partition_halves(cluster: Any, via: str = "iptables") -> Outcome:
    """[n1 n2] | [n3 n4 n5] while jobs sit on both sides and clients on both sides submit; the majority
    promotes the minority's backups."""
    name = "partition" if via == "iptables" else "partition-toxiproxy"
    return with_fault(cluster, make(name, cluster, shape="halves"))


def pause_one(cluster: Any) -> Outcome:
    """SIGSTOP / docker pause one node until its backups are promoted, then let it go on."""
    return with_fault(cluster, make("pause", cluster, nodes=[cluster.nodes[3].name]))


def kill_restart(cluster: Any) -> Outcome:
    """Kill one node, wait for its backups to be promoted, start it again on its data."""
    victim = cluster.nodes[4]
    out = with_fault(cluster, make("kill", cluster, nodes=[victim.name]),
                     before=lambda: _owns_queued_jobs(cluster, victim))
    cluster.wait_converged(60)
    return out


# ---- network faults through Toxiproxy ------------------------------------------------------------------------
def slow_successor(cluster: Any, ms: int = 200) -> Outcome:
    """`ms` on every link of one replica (each way): acks that need its copy wait for it; nothing lost."""
    fault = make("latency", cluster, nodes=[cluster.nodes[1].name], ms=ms)
    return with_fault(cluster, fault, rate=15.0, fault_at=20, promoted=False, hold=6.0)


def blackholed_node(cluster: Any) -> Outcome:
    """Every link of a node hangs (it stays up): detected and promoted like a killed node; after heal it
    rejoins and the ring agrees again."""
    victim = cluster.nodes[2]
    out = with_fault(cluster, make("blackhole", cluster, nodes=[victim.name]),
                     before=lambda: _owns_queued_jobs(cluster, victim))
    cluster.wait_converged(90)
    return out


def flapping_link(cluster: Any, seconds: float = 30.0, period: float = 2.0) -> Outcome:
    """The link n1 <-> n2 goes down and up every 1-2 s for `seconds` while jobs flow; counts ring changes."""
    fault = make("flap", cluster, between=(cluster.nodes[0].name, cluster.nodes[1].name), period=period)
    epoch0 = _epoch(cluster)
    out = with_fault(cluster, fault, jobs=int(seconds * 10), rate=10.0, fault_at=10, promoted=False,
                     hold=seconds)
    cluster.wait_converged(90)
    out.ring_changes = _epoch(cluster) - epoch0
    return out


def slow_owner_big_jobs(cluster: Any, rate_kb: int = 50, jobs: int = 12) -> Outcome:
    """`rate_kb` KB/s on the owner's links (n1's, its client's included) while jobs carry 256 KB arguments.

    The clients' timeout covers every job's bytes through the slow link (its argument in, two copies out):
    a user who sends megabytes over a 50 KB/s link sets a timeout to match, and the scenario asserts
    every submission is acknowledged, not that a 30 s default outlasts the link."""
    fault = make("bandwidth", cluster, nodes=[cluster.nodes[0].name], rate_kb=rate_kb)
    covering = 30.0 + jobs * 256 * 3 / rate_kb
    return with_fault(cluster, fault, jobs=jobs, kind="big", fault_at=0, promoted=False, hold=10.0, drain=240.0,
                      client_timeout=covering)


def client_link_reset(cluster: Any, seconds: float = 2.0) -> Outcome:
    """A client's link to n2 resets connections mid-submit for `seconds`: the client retries (on n2 again or
    another node), the grid dedupes by job id, no job runs or is recorded twice."""
    fault = make("reset", cluster, between=("client", cluster.nodes[1].name))
    return with_fault(cluster, fault, jobs=300, rate=60.0, fault_at=30, promoted=False, hold=seconds)


SCENARIOS = {"kill_two": kill_two, "partition_halves": partition_halves, "pause_one": pause_one,
             "kill_restart": kill_restart, "slow_successor": slow_successor, "blackholed_node": blackholed_node,
             "flapping_link": flapping_link, "slow_owner_big_jobs": slow_owner_big_jobs,
             "client_link_reset": client_link_reset}
