"""Graceful leave on real node processes (harness.local.LocalCluster): SIGTERM and `jobgrid leave` drain a
node, hand its jobs to their next owner, drop it from every ring at once, and exit 0; a restart on the
same data dir rejoins cleanly; a rolling restart of a whole grid under load loses and re-runs nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import wait_for
from harness import sidefx
from harness.history import HistoryRecorder
from harness.workload import judge, run_workload
from jobgrid.client import Client, build_spec

TOKEN = "leave-test-full-token-0123456789"
READ_TOKEN = "leave-test-read-token-0123456789"


def _listed_by(c, node, others) -> set[str]:
    """Names of the `others` whose server list still names `node` (by address)."""
    out = set()
    for o in others:
        try:
            sl = c.get(o, "/servers")
        except OSError:
            out.add(o.name)
            continue
        if any((s["ip"], s["port"]) == (node.host, node.port) for s in sl["servers"]):
            out.add(o.name)
    return out


def _sigterm(node) -> float:
    os.kill(node.proc.pid, signal.SIGTERM)
    return time.monotonic()


def _exit_code(node, timeout: float) -> int:
    rc = node.proc.wait(timeout)
    node.state = "stopped"
    return rc


def _long_job_then_sigterm(c, leaver, db: str, jid: str, seconds: float):
    """Submit a job that runs `seconds` on `leaver` (its own runner takes its own jobs first), wait until it
    has started, then SIGTERM the leaver. Returns (the job's future, the time of the signal)."""
    sidefx.create(db)
    with Client(leaver.url, timeout=30) as client:
        [fut] = client.submit_many([build_spec("call", target="harness.sidefx:record", args=[db, jid, seconds])])
        wait_for(lambda: sidefx.runs(db).get(jid), 10, "the job to start")
    return fut, _sigterm(leaver)


def test_sigterm_drops_an_idle_node_from_every_server_list_at_once_and_exits_0(cluster_factory):
    # a failure timeout of 5 s: a node stopped like a crash could not leave the server lists within 3 s
    c = cluster_factory(runners=1, failure_timeout=5.0)
    nodes = c.up(4)
    leaver, others = nodes[1], [n for n in nodes if n is not nodes[1]]
    assert _listed_by(c, leaver, others) == {o.name for o in others}
    t0 = _sigterm(leaver)
    wait_for(lambda: not _listed_by(c, leaver, others), 10, "every other server list to drop the leaver", step=0.02)
    took = time.monotonic() - t0
    print(f"every other server list dropped the leaver {took:.3f} s after SIGTERM")
    # the issue asks for "within a second"; measured here at ~0.05 s. The bound is 3 s to leave room for a loaded
    # 2-core machine: a departure that waited for the failure timeout (5 s here) would take longer
    assert took < 3.0, f"server lists dropped the leaver after {took:.2f} s"
    assert _exit_code(leaver, 30) == 0
    assert c.converged(others)  # one ring, the same everywhere, without the leaver
    # no failure timeout passed: nobody declared it dead, its successor took it out of the ring
    events = [e for st in c.states().values() for e in st.get("events", [])]
    assert not [e for e in events if e.get("kind") == "declared_dead"]
    assert [e for e in events if e.get("kind") == "member_left"]


def test_a_running_job_finishes_on_the_leaver_and_runs_once(cluster_factory, tmp_path):
    c = cluster_factory(runners=1)
    nodes = c.up(3)
    leaver = nodes[2]
    db = str(tmp_path / "runs.sqlite")
    fut, t0 = _long_job_then_sigterm(c, leaver, db, "long-1", 2.0)
    time.sleep(0.5)
    # the node drains but stays in the ring while its job runs: the copies must not be promoted under it
    assert _listed_by(c, leaver, nodes[:2]) == {"n1", "n2"}
    assert _exit_code(leaver, 30) == 0
    assert time.monotonic() - t0 >= 1.0  # it waited for the job
    c.wait_converged(10, nodes[:2])
    with Client([n.url for n in nodes[:2]], timeout=30) as client:
        res = client.wait_result(fut.job_id, timeout=20)
    assert res.state == "succeeded"
    assert len(sidefx.runs(db)["long-1"]) == 1, "the job ran again after a graceful leave"


def test_a_restart_on_the_same_data_dir_after_a_graceful_leave_rejoins_cleanly(cluster_factory):
    c = cluster_factory(runners=0)  # nothing runs: the jobs stay queued, so where they are can be counted
    nodes = c.up(3)
    leaver = nodes[1]
    with Client(leaver.url, timeout=30) as client:
        futs = client.submit_many([build_spec("call", target="jobgrid.examples:add", args=[i, 1]) for i in range(30)])
    ids = [f.job_id for f in futs]
    old_id = leaver.node_id
    _sigterm(leaver)
    assert _exit_code(leaver, 30) == 0
    rest = [nodes[0], nodes[2]]
    c.wait_converged(10, rest)

    def queued() -> int:
        return sum(st["counts"]["queued"] for st in c.states().values())
    wait_for(lambda: queued() == 30, 10, "the leaver's 30 queued jobs owned by the node after it")
    c.start(leaver, join=nodes[0])
    c.wait_healthy(leaver, 60)
    c.wait_converged(30)
    st = c.get(leaver, "/state")
    assert st["id"] != old_id and st["id"].startswith(old_id)  # a new incarnation: its old rows are orphans
    # orphan reconciliation drops the old rows the grid holds: every job is queued exactly once, on one owner
    wait_for(lambda: queued() == 30, 30, "every job queued once across the grid after the rejoin")
    owners = set()
    for jid in ids:
        rec = c.get(nodes[0], f"/jobs/{jid}")
        owners.add(rec["owner"])
    assert old_id not in owners and len(owners) == 1


def test_jobgrid_leave_needs_the_full_token_or_the_peer_secret(cluster_factory, tmp_path):
    rt = tmp_path / "read-token"
    rt.write_text(READ_TOKEN)
    c = cluster_factory(runners=1, token=TOKEN, extra_args=["--read-token-file", str(rt)])
    nodes = c.up(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGRID_")}

    def leave(node, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobgrid.cli", "leave", node.host, str(node.port)],
                              env={**env, **extra}, capture_output=True, text=True, timeout=120)
    r = leave(nodes[2], JOBGRID_TOKEN=READ_TOKEN)
    assert r.returncode == 1 and "403" in r.stderr and "full client token" in " ".join(r.stderr.split())
    assert nodes[2].proc.poll() is None and c.healthy(nodes[2])
    pf = c.workdir / "peer-secret"
    r = leave(nodes[2], JOBGRID_PEER_SECRET_FILE=str(pf))
    assert r.returncode == 0, r.stderr
    assert _exit_code(nodes[2], 10) == 0
    r = leave(nodes[1], JOBGRID_TOKEN=TOKEN)
    assert r.returncode == 0, r.stderr
    assert _exit_code(nodes[1], 10) == 0
    c.wait_converged(10, nodes[:1])


def test_a_rolling_restart_of_every_node_under_load_loses_and_reruns_nothing(cluster_factory, tmp_path):
    """Five nodes, two clients submitting all along (jobs that count their own runs outside the grid); each
    node in turn gets SIGTERM, exits 0 and is started again on its data dir. The recorded history must be
    valid, and no job may have run twice."""
    c = cluster_factory(runners=2)
    nodes = c.up(5)
    db = str(tmp_path / "runs.sqlite")
    sidefx.create(db)
    rec = HistoryRecorder()
    stop = threading.Event()
    out: dict = {}

    def spec_for(i: int):
        jid = f"roll-{i:06d}"
        return build_spec("call", job_id=jid, target="harness.sidefx:record", args=[db, jid, 0.05]), jid

    def work() -> None:
        try:
            out["timing"] = run_workload(c.client_urls(), c.token, rec, jobs=10**9, rate=25.0, drain_timeout=120,
                                         seed=15, stop_submitting=stop, spec_for=spec_for, clients=2)
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        time.sleep(3)
        for node in nodes:
            _sigterm(node)
            assert _exit_code(node, 90) == 0, c.log_tail(node)
            contact = next(n for n in nodes if n is not node and n.state == "running")
            c.start(node, join=contact)
            c.wait_healthy(node, 60)
            c.wait_converged(30)
            time.sleep(1.5)  # load on the new ring before the next node goes
    finally:
        stop.set()
    th.join(300)
    assert not th.is_alive() and "error" not in out, out.get("error")
    verdict = judge(rec.ops)
    acked = sorted(verdict.acknowledged)
    assert len(acked) > 200
    assert verdict.valid, f"lost {verdict.lost_count}, duplicated {verdict.duplicated_count}"
    assert verdict.lost_count == 0 and verdict.duplicated_count == 0
    assert not out["timing"]["raised_then_ran"]
    runs = sidefx.runs(db, acked)
    assert set(runs) == set(acked)  # every acknowledged job ran
    reruns = {j: len(s) - 1 for j, s in runs.items() if len(s) > 1}
    print(f"rolling restart of 5 nodes: {len(acked)} acknowledged, {verdict.lost_count} lost, "
          f"{verdict.duplicated_count} duplicated, {sum(reruns.values())} re-runs")
    assert not reruns, f"{len(reruns)} jobs ran more than once: {sorted(reruns)[:10]}"


def test_after_a_leave_the_promoted_jobs_are_back_to_r_copies(cluster_factory):
    """The successor promotes the leaver's copies; the other copies of those jobs (the second successor's,
    handed off to the promoter) must be made again on the promoter's successors, or the next failure or
    leave (a rolling restart) would take the only copy."""
    c = cluster_factory(runners=0, replicas=3)
    nodes = c.up(4)
    with Client(nodes[1].url, timeout=30) as client:
        client.submit_many([build_spec("call", target="jobgrid.examples:add", args=[i, 1]) for i in range(20)])

    def copies() -> int:
        return sum(st["counts"]["active"] + st["counts"]["backup"] for st in c.states().values())
    wait_for(lambda: copies() == 60, 10, "20 jobs in 3 copies")
    _sigterm(nodes[1])
    assert _exit_code(nodes[1], 30) == 0
    wait_for(lambda: copies() == 60, 15, "the 20 promoted jobs back to 3 copies on the 3 nodes left")


def test_three_nodes_leaving_at_once_leave_in_turn_and_keep_every_job(cluster_factory):
    """A scale-down by three (an orchestrator stops them together): departures take every member's add_lock,
    so they go one at a time, each after handing its copies over for the ring it leaves; all exit 0 and
    the two nodes left own every job once, in two copies (R = 3 on two nodes)."""
    c = cluster_factory(runners=0, replicas=3)
    nodes = c.up(5)
    ids = []
    for n in nodes:
        with Client(n.url, timeout=30) as client:
            ids += [f.job_id for f in client.submit_many(
                [build_spec("call", target="jobgrid.examples:add", args=[i, 1]) for i in range(8)])]
    leavers, rest = nodes[1:4], [nodes[0], nodes[4]]
    for n in leavers:
        _sigterm(n)
    assert [_exit_code(n, 60) for n in leavers] == [0, 0, 0]
    c.wait_converged(10, rest)

    def counts() -> tuple[int, int]:
        sts = c.states().values()
        return sum(st["counts"]["queued"] for st in sts), sum(st["counts"]["backup"] for st in sts)
    wait_for(lambda: counts() == (40, 40), 20, "40 jobs queued once and copied once on the two nodes left")
    owners = {c.get(rest[0], f"/jobs/{jid}")["owner"] for jid in ids}
    assert owners <= {n.node_id for n in rest}


def test_past_the_grace_period_a_running_job_is_handed_back_and_runs_elsewhere(cluster_factory, tmp_path):
    c = cluster_factory(runners=1, extra_args=["--leave-grace", "1"])
    nodes = c.up(3)
    leaver = nodes[2]
    db = str(tmp_path / "runs.sqlite")
    fut, t0 = _long_job_then_sigterm(c, leaver, db, "long-2", 4.0)
    assert _exit_code(leaver, 30) == 0
    took = time.monotonic() - t0
    assert 1.0 <= took < 3.5, f"the leave took {took:.2f} s with a 1 s grace and a 4 s job"
    with Client([n.url for n in nodes[:2]], timeout=30) as client:
        res = client.wait_result(fut.job_id, timeout=30)
    assert res.state == "succeeded" and res.node != leaver.node_id
    assert len(sidefx.runs(db)["long-2"]) == 2  # the first run was stopped, the job ran again elsewhere


def test_past_the_leave_timeout_the_node_exits_3_and_the_grid_treats_it_as_failed(cluster_factory):
    c = cluster_factory(runners=0, extra_args=["--leave-timeout", "2"])
    nodes = c.up(3)
    for n in nodes[:2]:
        c.pause(n)  # nobody can take the departure: no majority, no add_lock
    t0 = _sigterm(nodes[2])
    assert _exit_code(nodes[2], 30) == 3
    assert 1.5 <= time.monotonic() - t0 < 10
    for n in nodes[:2]:
        c.resume(n)
    c.wait_converged(20, nodes[:2])  # removed by failure detection, as after a crash
