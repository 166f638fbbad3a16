"""A grid comes back after an outage of every node (issue 11): SIGKILL of all five, then the nodes
started again on their data dirs with no join address, all at once or staggered over 30 s, or only a
majority of them. Checked against a recorded history and a side-effect counter per job: every
acknowledged job and result is served again, and no job that had finished before the outage runs again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from harness.local import LocalCluster
from jobgrid import Client
from jobgrid.client import pickle_spec
from jobgrid.history import HistoryRecorder, check

from conftest import by_value, wait_for

by_value(__name__)

TIMING = dict(replicas=3, runners=1, heartbeat_interval=0.5, failure_timeout=2.0, lease_ttl=3.0)
JOBGRID = str(Path(sys.executable).parent / "jobgrid")
FINISHED, QUEUED = 800, 200  # 1,000 acknowledged: 800 with results before the outage, 200 due after it


def counted(path: str, jid: str) -> str:
    """A job with a side effect: one line per run in a file every node shares."""
    with open(path, "a") as f:
        f.write(jid + "\n")
    return jid


def runs_of(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line:
                counts[line] = counts.get(line, 0) + 1
    return counts


def health(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}


def _value(res: Any) -> list:
    """What identifies one recorded run: its value, recording node and finish time."""
    return [res.value.hex() if res.value else None, res.node, res.finished_at]


def _load(c: LocalCluster, runs: Path, hist: HistoryRecorder) -> tuple[Client, dict[str, list], list]:
    """1,000 acknowledged jobs: 800 run to a result (read once, recorded in the history), 200 due in 5 s."""
    client = Client([n.url for n in c.nodes], timeout=60.0)
    jids = [f"{'f' if i < FINISHED else 'q'}{i}" for i in range(FINISHED + QUEUED)]
    for jid in jids:
        hist.invoke("c1", "submit", jid)
    futs = client.submit_many([pickle_spec(counted, (str(runs), j), {}, job_id=j) for j in jids[:FINISHED]])
    before: dict[str, list] = {}
    for f in futs:
        hist.ok("c1", "submit", f.job_id)
        assert f.result(timeout=120) == f.job_id
        res = client.wait_result(f.job_id, timeout=30)
        before[f.job_id] = _value(res)
        hist.ok("c1", "read", f.job_id, value=before[f.job_id], delivery=True)
    # due in 5 s, when the outage (right after this) has begun: they can only run once it is over
    pending = client.submit_many([pickle_spec(counted, (str(runs), j), {}, job_id=j, delay=5.0)
                                  for j in jids[FINISHED:]])
    for f in pending:
        hist.ok("c1", "submit", f.job_id)
    return client, before, pending


def _after(c: LocalCluster, client: Client, runs: Path, hist: HistoryRecorder, before: dict[str, list],
           pending: list) -> None:
    """Every job served again after the outage, each finished one exactly as before and run once."""
    for f in pending:  # the client's own futures waited through the whole outage
        assert f.result(timeout=180) == f.job_id
        hist.ok("c1", "read", f.job_id, value=_value(client.wait_result(f.job_id, timeout=60)), delivery=True)
    with Client([n.url for n in c.live()], timeout=60.0) as fresh:
        for jid in before:
            hist.ok("c2", "read", jid, value=_value(fresh.wait_result(jid, timeout=60)))
    res = check(hist.ops)
    assert res.valid, res.to_dict(limit=10)
    assert res.acknowledged_count == FINISHED + QUEUED and res.ok_count == FINISHED + QUEUED
    counts = runs_of(runs)
    again = {j: n for j, n in counts.items() if j in before and n > 1}
    assert not again, f"{len(again)} jobs that had finished before the outage ran again: {list(again)[:10]}"
    assert all(counts.get(f.job_id, 0) == 1 for f in pending), {f.job_id: counts.get(f.job_id) for f in pending}


def _outage(cluster_factory, tmp_path: Path, delays: list[float] | None) -> tuple[LocalCluster, float]:
    """Load, SIGKILL every node, start them again at `delays` (s after the first; None entries never)."""
    c = cluster_factory(**TIMING)
    c.up(5)
    runs = tmp_path / "runs.txt"
    hist = HistoryRecorder()
    client, before, pending = _load(c, runs, hist)
    try:
        for n in c.nodes:
            c.kill(n)
        assert not [j for j in runs_of(runs) if j.startswith("q")], "the delayed jobs ran before the outage"
        t0 = time.monotonic()
        order = sorted(((d, n) for d, n in zip(delays or [0.0] * 5, c.nodes) if d is not None), key=lambda x: x[0])
        first = order[0][1]
        for d, n in order:
            time.sleep(max(0.0, t0 + d - time.monotonic()))  # the outage's own pace (the fault), not a wait
            c.start(n)  # on its data dir, no join address: it must find the others from its saved ring
            if n is first and len(order) > 1:  # alone it waits (503), and says why
                wait_for(lambda: (h := health(first.url))[0] == 503 and "majority" in h[1].get("reason", ""),
                         30, "the first node back to wait for a majority")
        for _, n in order:
            c.wait_healthy(n, 120)
        took = time.monotonic() - t0
        c.wait_converged(60, nodes=[n for _, n in order])
        _after(c, client, runs, hist, before, pending)
    finally:
        client.close()
    return c, took


def test_whole_grid_sigkill_then_all_restarted_at_once(cluster_factory, tmp_path):
    _, took = _outage(cluster_factory, tmp_path, None)
    print(f"whole grid back {took:.1f} s after the restart")


def test_whole_grid_sigkill_then_restarted_one_by_one_over_30_s(cluster_factory, tmp_path):
    c, took = _outage(cluster_factory, tmp_path, [0.0, 7.5, 15.0, 22.5, 30.0])
    assert len(c.live()) == 5
    print(f"whole grid back {took:.1f} s after the first restart")


def test_whole_grid_sigkill_and_only_a_majority_comes_back(cluster_factory, tmp_path):
    c, _ = _outage(cluster_factory, tmp_path, [0.0, None, 1.0, None, 2.0])
    assert len(c.live()) == 3


def test_a_minority_waits_with_a_reason_until_forced_up(cluster_factory, tmp_path):
    """Two of five come back: they wait (503 with the reason on /healthz, `jobgrid status` exits 1 naming the
    missing members) until an operator restarts them with --force-new-cluster; then the grid serves."""
    c = cluster_factory(**TIMING)
    nodes = c.up(5)
    with Client(nodes[0].url, timeout=30.0) as client:
        assert client.submit(counted, str(tmp_path / "runs.txt"), "before").result(timeout=60) == "before"
    for n in nodes:
        c.kill(n)
    a, b = nodes[0], nodes[1]
    c.start(a)
    c.start(b)
    code, body = wait_for(lambda: (h := health(a.url))[0] == 503 and "2 of 5" in h[1].get("reason", "") and h,
                          30, "the survivors to see each other and wait")
    assert all(n.node_id in body["reason"] for n in nodes[2:]), body
    st = subprocess.run([JOBGRID, "status", "--address", a.url, "--timeout", "5"], capture_output=True, text=True,
                        timeout=60)
    assert st.returncode == 1 and "majority" in st.stderr and nodes[3].node_id in st.stderr, st
    log = a.log_path.read_text()
    assert "waiting_for_majority" in log and f"{nodes[2].host}:{nodes[2].port}" in log
    for n in (a, b):
        c.kill(n)
    c.env["JOBGRID_FORCE_NEW_CLUSTER"] = "true"
    c.start(a)
    c.start(b)
    c.wait_healthy(a, 60)
    c.wait_healthy(b, 60)
    c.wait_converged(30, nodes=[a, b])
    with Client([a.url, b.url], timeout=30.0) as client:
        assert client.submit(counted, str(tmp_path / "runs.txt"), "after").result(timeout=60) == "after"
    assert "grid_forced_up" in a.log_path.read_text() + b.log_path.read_text()
