"""What a client sees while the grid fails over (issue 11): no future fails because of the grid's own churn.

Real node processes on loopback, SIGKILL, and the blocking `Client` a user would write: the test waits on
the futures it got from `client.submit` (not polling the grid) and every one of them must resolve with
the job's value.
"""

from __future__ import annotations

import time

from jobgrid import Client, examples
from jobgrid.history import HistoryRecorder, check

from conftest import by_value

by_value(__name__)

CONTACT_TIMING = dict(replicas=3, runners=1, heartbeat_interval=0.5, failure_timeout=2.0, lease_ttl=3.0)


def test_kill_the_clients_first_address_and_another_node_no_future_raises(cluster_factory):
    """The issue's scenario: 5 nodes (R=3, 1 runner each), a Client given all five addresses, 400 jobs,
    SIGKILL of two nodes (one of them the client's first address) one second later."""
    c = cluster_factory(**CONTACT_TIMING)
    nodes = c.up(5)
    hist = HistoryRecorder()
    raised: dict[str, BaseException] = {}
    values: dict[str, object] = {}
    with Client([n.url for n in nodes], timeout=60.0) as client:
        futs = []
        for i in range(400):
            hist.invoke("c1", "submit", f"job{i}")
            f = client.submit(examples.sleep, 0.05, i)
            futs.append((i, f))
        time.sleep(1.0)  # the fault's timing, as in the report: a second into the run
        c.kill(nodes[0])  # the client's first address, the owner of every job
        c.kill(nodes[2])  # n3: one of the two nodes holding the copies of n1's jobs
        for i, f in futs:
            try:
                values[f.job_id] = v = f.result(timeout=120)
            except BaseException as e:  # noqa: BLE001 - every kind of failure counts
                raised[f.job_id] = e
                hist.info("c1", "submit", f"job{i}", error=repr(e))
                continue
            hist.ok("c1", "submit", f"job{i}")
            hist.ok("c1", "read", f"job{i}", value=v, delivery=True)
            assert v == i, (f.job_id, v, i)
    kinds = sorted({f"{type(e).__name__}: {str(e)[:80]}" for e in raised.values()})
    assert not raised, f"{len(raised)} of 400 futures raised: {kinds[:5]}"
    assert len(values) == 400
    res = check(hist.ops)
    assert res.valid and res.ok_count == 400, res.to_dict(limit=10)
