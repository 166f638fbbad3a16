"""One path for a final result, and R as a property of the grid, against real node processes.

- A cancelled job's result, like a succeeded one's (tests/test_latency_paths.py), is handed out only
  once its copies exist: with a replica frozen by SIGSTOP, the cancel's result appears only after the
  grid has given up that replica's copy (the node left the ring).
- The replication factor belongs to the grid: a node started without --replicas adopts the grid's; one
  started with another --replicas refuses to join, in one line that names both.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import msgspec

from jobgrid import examples
from jobgrid.client import pickle_spec
from jobgrid.protocol import SubmitRequest

from conftest import wait_for


def post(url: str, body: dict | bytes, timeout: float = 30.0) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=raw, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_cancelled_result_is_not_handed_out_while_a_copy_is_still_being_written(cluster_factory):
    cl = cluster_factory(replicas=3, runners=1)
    owner, stuck, other = cl.up(3, timeout=60)
    stuck_id = cl.get(stuck, "/state")["id"]
    spec = pickle_spec(examples.noop, (7,), {}, delay=600)  # queued for ten minutes: only a cancel ends it
    status, _ = post(owner.url + "/jobs", msgspec.json.encode(SubmitRequest(jobs=[spec])))
    assert status == 202
    cl.pause(stuck)  # SIGSTOP: the cancelled result's copy to it hangs until the grid declares it dead
    cancelled: dict = {}

    def cancel() -> None:
        cancelled["answer"] = post(owner.url + "/jobs/cancel", {"ids": [spec.id]})

    t = threading.Thread(target=cancel)
    t.start()
    try:
        left_ring_at = seen_at = None
        end = time.monotonic() + 20
        while seen_at is None and time.monotonic() < end:
            status, body = post(owner.url + "/results/wait", {"ids": [spec.id], "timeout": 0.05})
            now = time.monotonic()
            if status == 200 and body["results"]:
                seen_at = now
                assert body["results"][0]["state"] == "cancelled"
            ring = [m["id"] for m in cl.get(owner, "/state")["ring"]["members"]]
            if left_ring_at is None and stuck_id not in ring:
                left_ring_at = now
        assert seen_at is not None, "the cancelled result never appeared"
        # recorded on the owner at once, handed out only once the frozen copy was given up with its node
        assert left_ring_at is not None and seen_at >= left_ring_at - 0.05, (seen_at, left_ring_at)
        t.join(30)
        assert cancelled["answer"] == (200, {"cancelled": [spec.id]})
    finally:
        cl.resume(stuck)
        t.join(30)
    wait_for(lambda: other.proc.poll() is None, 1, "the third node to be alive")


def test_a_joiner_adopts_the_grids_replicas_and_refuses_a_different_one(cluster_factory):
    cl = cluster_factory(replicas=2, runners=0)
    first = cl.start(cl.add_node())
    cl.wait_healthy(first)
    cl.replicas = None  # the second node is started without --replicas: it adopts the grid's R
    second = cl.start(cl.add_node(), join=first)
    cl.wait_healthy(second)
    third = cl.start(cl.add_node(), join=first)
    cl.wait_healthy(third)
    cl.wait_converged(30)
    for n in (first, second, third):
        assert cl.get(n, "/servers")["replicas"] == 2
        assert cl.get(n, "/state")["replicas"] == 2
    # R=2 everywhere: the jobs submitted to `second` have exactly one copy, on its one successor
    specs = [pickle_spec(examples.noop, (i,), {}, delay=600) for i in range(20)]
    assert post(second.url + "/jobs", msgspec.json.encode(SubmitRequest(jobs=specs)))[0] == 202
    # /state's queue counts are a view recounted at most every 0.1 s (node/counts.py): wait for the recount
    backups: dict = {}

    def one_copy_each() -> bool:
        backups.update({n.name: cl.get(n, "/state")["counts"]["backup"] for n in (first, third)})
        return sorted(backups.values()) == [0, 20]
    wait_for(one_copy_each, 5, f"the 20 copies on one successor only (last seen {backups})")

    cl.replicas = 3  # a node that asks for another R: one clear line, and it does not join
    odd = cl.start(cl.add_node(), join=first)
    assert odd.proc.wait(60) != 0
    log = cl.log_tail(odd, 5)
    assert "this grid keeps 2 copies of every job" in log and "--replicas 3" in log, log
    assert "Traceback" not in log, log
    assert len(cl.get(first, "/servers")["servers"]) == 3
