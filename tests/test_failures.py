"""Failure handling, proven with real node processes on loopback and Jepsen-style histories.

Every test records what its client asked for and got back (harness.history) and checks the history:
nothing acknowledged is lost, no result is recorded or delivered twice. Faults are real: SIGKILL,
SIGSTOP/SIGCONT, restarts on the data dir, iptables partitions (root only).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from harness.local import LocalCluster, NodeHandle
from jobgrid.client import AsyncClient, build_spec, pickle_spec
from harness.history import HistoryRecorder, check

from conftest import by_value, needs_root, wait_for

by_value(__name__)

TIMING = dict(replicas=3, runners=2, heartbeat_interval=0.5, failure_timeout=2.0, lease_ttl=3.0)


def counted_run(path: str, jid: str, seconds: float) -> str:
    """Append this job's id to a file shared by all nodes (counts executions), then sleep."""
    with open(path, "a") as f:
        f.write(jid + "\n")
    time.sleep(seconds)
    return jid


# ---- helpers -------------------------------------------------------------------------------------------
def sleep_spec(i: int, seconds: float, prefix: str = "j"):
    return build_spec("call", job_id=f"{prefix}{i}-{uuid.uuid4().hex[:6]}", target="jobgrid.examples:sleep",
                      args=[seconds, i])


def counted_spec(path: Path, i: int, seconds: float):
    jid = f"c{i}-{uuid.uuid4().hex[:6]}"
    return pickle_spec(counted_run, (str(path), jid, seconds), {}, job_id=jid), jid


class Workload:
    """A client in its own thread: submits specs, records the history, awaits every acknowledged result."""

    def __init__(self, urls: list[str], hist: HistoryRecorder, process: str = "c1") -> None:
        self.urls = urls
        self.hist = hist
        self.process = process
        self.acked: dict[str, Any] = {}
        self.expected: dict[str, Any] = {}
        self.read: set[str] = set()
        self.got: dict[str, Any] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client: AsyncClient = self._run(self._make())

    async def _make(self) -> AsyncClient:
        return AsyncClient(self.urls, timeout=20.0)

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _submit_one(self, spec, expect) -> None:
        self.hist.invoke(self.process, "submit", spec.id)
        try:
            fut = await self.client.submit_spec(spec)
        except Exception as e:  # noqa: BLE001 - outcome unknown to the client
            self.hist.info(self.process, "submit", spec.id, error=repr(e))
            return
        self.hist.ok(self.process, "submit", spec.id)
        self.acked[spec.id] = fut
        self.expected[spec.id] = expect

    def submit(self, specs_and_values: list[tuple[Any, Any]]) -> None:
        async def go():
            await asyncio.gather(*(self._submit_one(s, v) for s, v in specs_and_values))
        self._run(go(), 120)

    def submit_async(self, specs_and_values: list[tuple[Any, Any]]) -> None:
        """Fire and forget (the submissions run on the workload's loop)."""
        for s, v in specs_and_values:
            asyncio.run_coroutine_threadsafe(self._submit_one(s, v), self.loop)

    def read_all(self, timeout: float = 120.0) -> dict[str, Any]:
        """One read op per result received (delivery=True, value=the returned value)."""
        async def one(jid: str, fut) -> None:
            try:
                v = await asyncio.wait_for(asyncio.shield(fut), timeout)
            except Exception as e:  # noqa: BLE001
                self.hist.fail(self.process, "read", jid, error=repr(e))
                return
            self.hist.ok(self.process, "read", jid, value=v, delivery=True)
            got[jid] = v

        got: dict[str, Any] = {}

        async def go():
            await asyncio.gather(*(one(j, f) for j, f in list(self.acked.items()) if j not in self.read))
            self.read.update(got)
            self.got.update(got)
        self._run(go(), timeout + 30)
        return dict(self.got)

    def close(self) -> None:
        try:
            self._run(self.client.close(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def get_json(node: NodeHandle, path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(node.url + path, timeout=timeout) as r:
        return json.loads(r.read())


def _port_open(node: NodeHandle) -> bool:
    try:
        socket.create_connection((node.host, node.port), timeout=0.5).close()
        return True
    except OSError:
        return False



def cross_read(cluster: LocalCluster, ids: list[str]) -> None:
    """Read each result from two different live nodes and compare: one recorded result per id
    (same recording node, same finish time, same value), wherever it is read."""
    live = cluster.live()
    assert len(live) >= 2
    for k, jid in enumerate(ids):
        seen = []
        for j in range(2):
            node = live[(k + j) % len(live)]
            res = wait_for(lambda n=node: _result_or_none(n, jid), 30, f"result of {jid} on {node.name}")
            seen.append((res["node"], res["finished_at"], res["state"], res.get("value")))
        assert seen[0] == seen[1], f"{jid} has two different results: {seen}"


def _result_or_none(node: NodeHandle, jid: str) -> dict | None:
    try:
        return get_json(node, f"/jobs/{jid}/result")
    except (urllib.error.URLError, OSError, ValueError):
        return None


def assert_valid(hist: HistoryRecorder, expect_acked: int | None = None):
    res = check(hist.ops)
    assert res.valid, {"lost": res.lost[:20], "duplicated": res.duplicated[:20], "unexpected": res.unexpected[:20]}
    assert not res.lost and not res.duplicated and not res.unexpected
    if expect_acked is not None:
        assert res.acknowledged_count >= expect_acked, res.to_dict(limit=20)
    return res


def assert_values(w: Workload, got: dict[str, Any]) -> None:
    for jid, want in w.expected.items():
        assert got.get(jid) == want, (jid, got.get(jid), want)


def owner_counts(cluster: LocalCluster) -> dict[str, int]:
    """Queued+leased jobs each live node owns (its active queue)."""
    out = {}
    for name, st in cluster.states().items():
        out[name] = st["counts"]["active"]
    return out


def runs_of(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line:
                counts[line] = counts.get(line, 0) + 1
    return counts


# ---- scenarios -----------------------------------------------------------------------------------------
def test_kill_owner_of_queued_jobs_promotes_replicas(cluster_factory):
    c = cluster_factory(**TIMING)
    nodes = c.up(4)
    victim = nodes[0]
    hist = HistoryRecorder()
    # submit to the victim only (the others are in the list for failover of reads)
    w = Workload([victim.url] + [n.url for n in nodes[1:]], hist)
    try:
        w.submit([(sleep_spec(i, 0.2), i) for i in range(60)])
        assert len(w.acked) == 60
        # mid-run: some jobs done, most still queued on the victim
        wait_for(lambda: get_json(victim, "/state")["counts"]["active"] < 56, 20, "first jobs to run")
        assert get_json(victim, "/state")["counts"]["active"] > 10
        c.kill(victim)
        got = w.read_all(90)
        assert_values(w, got)
        states = c.states()
        promos = [p for st in states.values() for p in st["promotions"] if p["dead"] == victim.node_id]
        assert promos, {k: v["promotions"] for k, v in states.items()}
        assert sum(p["jobs"] for p in promos) > 0
        cross_read(c, list(w.acked)[:20])
        assert_valid(hist, 60)
    finally:
        w.close()
        c.stop()


def test_kill_two_of_five_at_once(cluster_factory):
    c = cluster_factory(**TIMING)
    nodes = c.up(5)
    hist = HistoryRecorder()
    w = Workload([n.url for n in nodes], hist)
    try:
        specs = [(sleep_spec(i, 0.1), i) for i in range(80)]
        w.submit(specs[:40])
        # spread the owners: submit the rest through another node
        w2 = Workload([nodes[3].url, nodes[4].url], hist, process="c2")
        try:
            w2.submit(specs[40:])
            c.kill(nodes[1]), c.kill(nodes[3])
            got = w.read_all(90)
            got.update(w2.read_all(90))
            assert_values(w, got)
            assert_values(w2, got)
        finally:
            w2.close()
        c.wait_converged(20)
        cross_read(c, list(w.acked)[:15] + list(w2.acked)[:15])
        assert_valid(hist, 80)
    finally:
        w.close()
        c.stop()


def test_pause_longer_than_failure_timeout_no_double_result(cluster_factory, tmp_path):
    c = cluster_factory(**TIMING)
    nodes = c.up(4)
    runs = tmp_path / "runs.txt"
    hist = HistoryRecorder()
    w = Workload([nodes[1].url, nodes[2].url, nodes[3].url, nodes[0].url], hist)
    try:
        specs = [counted_spec(runs, i, 0.15) for i in range(40)]
        w.submit(specs)
        # the paused node holds jobs (its own and stolen ones) while it is frozen
        wait_for(lambda: any(n.strip() for n in runs.read_text().splitlines()) if runs.exists() else False,
                   10, "first runs")
        c.pause(nodes[1])
        time.sleep(4.0)  # the fault itself: frozen longer than the failure timeout
        c.resume(nodes[1])
        old_id = nodes[1].node_id
        got = w.read_all(90)
        assert_values(w, got)
        c.wait_converged(30)
        assert nodes[1].node_id != old_id  # it was removed while frozen and came back as a new incarnation
        cross_read(c, list(w.acked))
        res = assert_valid(hist, 40)
        assert res.ok_count == 40
        dropped = sum(st["duplicates_dropped"] for st in c.states().values())
        assert dropped >= 0  # allowed: runs of a job that finished twice are dropped, not recorded
    finally:
        w.close()
        c.stop()


@needs_root
def test_partition_two_three_then_heal(cluster_factory):
    c = cluster_factory(**TIMING)
    nodes = c.up(5)
    a, b, cc, d, e = nodes
    hist = HistoryRecorder()
    wa = Workload([a.url] + [n.url for n in nodes if n is not a], hist, process="ca")
    wc = Workload([cc.url] + [n.url for n in nodes if n is not cc], hist, process="cc")
    try:
        c.partition([[a, b], [cc, d, e]])
        end = time.monotonic() + 10
        i = 0
        while time.monotonic() < end:
            wa.submit_async([(sleep_spec(i, 0.05, "a"), i)])
            wc.submit_async([(sleep_spec(i, 0.05, "c"), i)])
            i += 1
            time.sleep(0.2)
        old_ids = {n.name: n.node_id for n in nodes}
        # the majority removed the minority; the minority stopped serving (no quorum)
        wait_for(lambda: c.converged([cc, d, e]), 10, "the majority to agree on a ring of 3")
        assert not get_json(a, "/state")["quorum"]
        c.heal()
        # every node alive rejoins (the removed ones as new incarnations): one ring of all 5 again
        took = c.wait_converged(30)
        assert took < 5.0, f"one ring again only {took:.1f} s after healing"
        assert {n.node_id for n in (a, b)}.isdisjoint({old_ids["n1"], old_ids["n2"]})
        # let outstanding submissions finish (they fail over and retry idempotently)
        wait_for(lambda: sum(1 for op in hist.ops if op["f"] == "submit" and op["type"] != "invoke")
                   >= 2 * i, 60, "all submissions to finish")
        got = wa.read_all(90)
        got.update(wc.read_all(90))
        assert_values(wa, got)
        assert_values(wc, got)
        cross_read(c, list(wa.acked)[:10] + list(wc.acked)[:10])
        res = assert_valid(hist)
        assert res.acknowledged_count >= i  # the majority side kept taking jobs
    finally:
        wa.close()
        wc.close()
        c.stop()
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    assert c.chain not in rules


def test_kill_node_while_another_joins(cluster_factory):
    c = cluster_factory(**TIMING)
    nodes = c.up(4)
    hist = HistoryRecorder()
    w = Workload([n.url for n in nodes], hist)
    try:
        w.submit([(sleep_spec(i, 0.1), i) for i in range(40)])
        joiner = c.add_node()
        # freeze the victim first, so the joiner is surely mid-join (waiting for the victim's add_lock)
        # when the victim dies
        c.pause(nodes[2])
        c.start(joiner, join=nodes[0])
        wait_for(lambda: _port_open(joiner), 30, "the joiner's port")
        assert not c.healthy(joiner)
        c.kill(nodes[2])
        c.wait_healthy(joiner, 60)
        c.wait_converged(30)
        assert len(c.live()) == 4
        got = w.read_all(90)
        assert_values(w, got)
        cross_read(c, list(w.acked)[:20])
        assert_valid(hist, 40)
    finally:
        w.close()
        c.stop()


def test_kill_runner_holding_stolen_lease(cluster_factory, tmp_path):
    c = cluster_factory(**TIMING)
    nodes = c.up(3)
    runs = tmp_path / "runs.txt"
    hist = HistoryRecorder()
    owner = nodes[0]
    w = Workload([owner.url, nodes[1].url, nodes[2].url], hist)
    try:
        # 2 runners per node: 6 long jobs are more than the owner runs at once, so the others steal some
        specs = [counted_spec(runs, i, 4.0) for i in range(6)]
        w.submit(specs)
        # a node other than the owner that started one (it can only have stolen it): the thief
        thief = wait_for(lambda: next((n for n in nodes[1:] if get_json(n, "/state")["started_jobs"] > 0), None),
                           20, "a thief to start a stolen job")
        wait_for(lambda: len(runs_of(runs)) >= 3, 20, "jobs running")
        c.kill(thief)
        got = w.read_all(90)
        assert_values(w, got)
        counts = runs_of(runs)
        assert set(counts) == {jid for _, jid in specs}
        rerun = [j for j, n in counts.items() if n > 1]
        assert rerun, counts  # the killed runner's jobs ran again elsewhere
        cross_read(c, list(w.acked))
        assert_valid(hist, 6)
    finally:
        w.close()
        c.stop()


def test_restart_killed_node_on_its_data_dir(cluster_factory, tmp_path):
    c = cluster_factory(**TIMING)
    nodes = c.up(4)
    runs = tmp_path / "runs.txt"
    hist = HistoryRecorder()
    victim = nodes[1]
    w = Workload([victim.url] + [n.url for n in nodes if n is not victim], hist)
    try:
        specs = [counted_spec(runs, i, 0.05) for i in range(30)]
        w.submit(specs)
        first = w.read_all(60)
        assert len(first) == 30
        before = runs_of(runs)
        c.kill(victim)
        c.wait_converged(20)
        c.restart(victim)
        c.wait_converged(30)
        assert len(c.live()) == 4
        more = [counted_spec(runs, 100 + i, 0.05) for i in range(20)]
        w.submit(more)
        got = w.read_all(60)
        assert_values(w, got)
        # give any wrongly re-queued old job a chance to run: wait until every node is idle
        wait_for(lambda: all(st["counts"]["active"] == 0 for st in c.states().values()), 30, "idle queues")
        after = runs_of(runs)
        for jid, n in before.items():
            assert after[jid] == n, f"finished job {jid} ran again after the restart"
        cross_read(c, list(w.acked))
        assert_valid(hist, 50)
    finally:
        w.close()
        c.stop()


def test_client_fails_over_when_its_node_dies(cluster_factory):
    c = cluster_factory(**TIMING)
    nodes = c.up(4)
    hist = HistoryRecorder()
    w = Workload([n.url for n in nodes], hist)  # first address: nodes[0]
    try:
        w.submit([(sleep_spec(i, 0.05), i) for i in range(20)])
        c.kill(nodes[0])
        w.submit([(sleep_spec(100 + i, 0.05), 100 + i) for i in range(20)])
        got = w.read_all(60)
        assert_values(w, got)
        res = assert_valid(hist, 40)
        assert res.ok_count == 40
    finally:
        w.close()
        c.stop()
