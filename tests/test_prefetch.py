"""Runner prefetch: short jobs are leased in batches; once jobs turn out long, unstarted ones go back."""

from __future__ import annotations

import time
from pathlib import Path

from jobgrid import Client, examples
from jobgrid.node.store import Store
from jobgrid.protocol import JobRecord, JobSpec


def test_release_puts_unstarted_leases_back_and_undoes_the_attempt(tmp_path: Path) -> None:
    st = Store(tmp_path / "s.db")
    st.put_jobs([JobRecord(spec=JobSpec(id=f"j{i}", kind="call", target="jobgrid.examples:noop"), owner="a")
                 for i in range(3)])
    leased = st.lease("a", "a", 3, time.time() + 30, time.time())
    assert [r.attempts for r in leased] == [1, 1, 1]
    assert st.release("a", "someone-else", ["j1", "j2"]) == []  # only the holder's own leases
    assert sorted(st.release("a", "a", ["j1", "j2"])) == ["j1", "j2"]
    again = st.lease("a", "b", 3, time.time() + 30, time.time())
    assert sorted((r.spec.id, r.attempts) for r in again) == [("j1", 1), ("j2", 1)]


def test_long_jobs_after_a_burst_of_short_ones_spread_over_the_grid(cluster_factory) -> None:
    """After noops the owner's runner prefetches deeply; long jobs must not stay hoarded behind one worker."""
    cl = cluster_factory(replicas=3, runners=1)
    cl.up(3)
    with Client(cl.nodes[0].url, timeout=60) as c:  # every job is owned by node 0
        assert c.map(examples.noop, range(300), timeout=120) == list(range(300))
        before = sum(s.get("started_jobs", 0) for s in cl.states().values())
        t0 = time.monotonic()
        assert c.map(examples.sleep, [1.0] * 6, list(range(6)), timeout=120) == list(range(6))
        wall = time.monotonic() - t0
    states = cl.states().values()
    assert sum(s.get("started_jobs", 0) for s in states) - before == 6  # given back != run twice
    assert wall < 4.5, f"6 x 1 s jobs on 3 workers took {wall:.1f} s: prefetched jobs stayed on one runner"
