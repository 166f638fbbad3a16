"""Issue 4/3 (lost acknowledged jobs in `make demo` on Docker): a resync that spans a ring change must not
prune the owner's copies from the successors it gained meanwhile.

The faulty sequence: owner X resyncs after its first successor S1 is removed; its next successor S2 is frozen
(SIGSTOP, so copies to it hang until the peer timeout, as a killed container does on Docker) and is removed
while the resync waits. The old resync then computed its prune list from the successors it saw when it
*started* and sent `prune_all` to X's new successors, wiping every backup of X's queued jobs (X was their only
copy until the next resync). Here every node's log must show no pruning of X's jobs on a node that is X's
successor, and the history must be valid after X itself is killed.
"""

from __future__ import annotations

import json
import time
import uuid

from jobgrid.client import build_spec
from harness.history import HistoryRecorder

from conftest import by_value, wait_for
from test_failures import TIMING, Workload, assert_valid, get_json

by_value(__name__)


def _successors(ring: dict, of: str, n: int = 2) -> list[str]:
    members = sorted(ring["members"], key=lambda m: m["location"])
    ids = [m["id"] for m in members]
    k = ids.index(of)
    return [ids[(k + j) % len(ids)] for j in range(1, n + 1)]


def _pruned_jobs_of(log_text: str, owner: str) -> int:
    n = 0
    for line in log_text.splitlines():
        if '"replicas_pruned"' not in line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("owner") == owner:
            n += ev.get("jobs", 0)
    return n


def test_resync_across_ring_change_keeps_new_successors_copies(cluster_factory):
    c = cluster_factory(**TIMING)
    nodes = c.up(5)
    by_id = {n.node_id: n for n in nodes}
    x = nodes[0]
    s1_id, s2_id = _successors(get_json(x, "/state")["ring"], x.node_id)
    s1, s2 = by_id[s1_id], by_id[s2_id]
    hist = HistoryRecorder()
    w = Workload([x.url] + [n.url for n in nodes[1:]], hist)  # X (first address) owns every job
    try:
        # jobs that wait 24 s before they may run: they sit in X's queue (and its backups) through the faults
        specs = [(build_spec("call", job_id=f"p{i}-{uuid.uuid4().hex[:6]}", target="jobgrid.examples:sleep",
                             args=[0.05, i], delay=24.0), i) for i in range(40)]
        w.submit(specs)
        assert len(w.acked) == 40
        c.pause(s1)
        time.sleep(1.0)  # S2 frozen a second later: still "alive" when S1 is removed and X's resync begins
        c.pause(s2)
        x_ring = lambda: {m["id"] for m in get_json(x, "/state")["ring"]["members"]}  # noqa: E731
        wait_for(lambda: s1_id not in x_ring() and s2_id not in x_ring(), 30, "S1 and S2 removed")
        new_succ = _successors(get_json(x, "/state")["ring"], x.node_id)
        # X's resync waits out the peer timeout on S2 (5 s), then copies to the new successors and prunes
        wait_for(lambda: all(get_json(by_id[i], "/state")["counts"]["backup"] >= 40 for i in new_succ), 30,
                 "X's jobs copied to its new successors")
        time.sleep(7.0)  # the stale resync has finished (5 s peer timeout + copies): no condition marks its end
        for i in new_succ:
            pruned = _pruned_jobs_of(by_id[i].log_path.read_text(errors="replace"), x.node_id)
            assert pruned == 0, f"{by_id[i].name} (a successor of X) dropped {pruned} of X's copies"
            assert get_json(by_id[i], "/state")["counts"]["backup"] >= 40
        c.kill(x)  # the copies on the new successors are now the only ones: nothing may be lost
        c.resume(s1), c.resume(s2)
        got = w.read_all(90)
        assert got == {jid: v for jid, v in w.expected.items()}
        assert_valid(hist, 40)
    finally:
        w.close()
        c.stop()
