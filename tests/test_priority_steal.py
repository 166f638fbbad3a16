"""Issue 6: priorities - higher runs first, and stealing respects them.

A live 2-node grid: n1 runs no jobs (--runners 0) and holds every job (it received them); n2
(--runners 1) can only run them by stealing from n1. The high-priority jobs must start first.
"""

from __future__ import annotations

from jobgrid import Client, examples
from jobgrid.client import pickle_spec

from conftest import wait_for


def test_stealing_takes_high_priority_first(cluster_factory):
    c = cluster_factory(runners=0, replicas=2)
    n1 = c.add_node()
    c.start(n1)
    c.wait_healthy(n1)
    c.runners = 1  # only n2 runs jobs
    n2 = c.add_node()
    c.start(n2, join=n1)
    c.wait_healthy(n2)
    wait_for(lambda: all(len(c.get(n, "/servers")["servers"]) == 2 for n in (n1, n2)), 30, "a ring of 2")

    with Client(n1.url, timeout=60) as cl:  # every job goes to n1's queue
        blocker = cl.submit(examples.sleep, 1.5, "blocker")
        wait_for(lambda: any(r["job_id"] == blocker.job_id for r in c.get(n2, "/state")["runners"]), 30,
                 "n2 to steal and run the blocker")
        # one batch, low-priority jobs first (older), so only priority can put the high ones ahead
        specs = [pickle_spec(examples.sleep, (0.05, f"low{i}"), {}, priority=-1) for i in range(4)]
        specs += [pickle_spec(examples.sleep, (0.05, f"high{i}"), {}, priority=10) for i in range(4)]
        futs = cl.submit_many(specs)
        assert [f.result(timeout=90) for f in futs] == [f"low{i}" for i in range(4)] + [f"high{i}" for i in range(4)]
        results = {f.job_id: cl.wait_result(f.job_id, 30) for f in futs}

    assert all(r.state == "succeeded" for r in results.values()), results
    assert {r.node for r in results.values()} <= {c.get(n2, "/servers")["me"]}, "n1 has no runners"
    starts = [(results[f.job_id].started_at, s.priority) for f, s in zip(futs, specs)]
    high = [t for t, p in starts if p == 10]
    low = [t for t, p in starts if p == -1]
    assert max(high) <= min(low), f"a low-priority job started before a high one: {sorted(starts)}"
    assert n1.proc.poll() is None and n2.proc.poll() is None
