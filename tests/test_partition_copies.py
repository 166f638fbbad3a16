"""A node cut off by a partition may run and record a job in the failure-detection window; what it wrote
after the grid removed it must never reach the members' stores as the grid's record (the bug behind
`test_partition_two_three_then_heal`'s "has two different results": the minority owner's late result copy
replaced the majority's replica on the promoter of its position, which then adopted it as its own).

The pure decisions: `Membership.copy_problem` (whose copies a node takes) and `lifecycle.copy_replaces`
(which stored record a copy may replace); the store carries the second out."""

from __future__ import annotations

import pytest

from jobgrid.membership import Membership
from jobgrid.node.lifecycle import copy_replaces, second_runs
from jobgrid.node.store import Store
from jobgrid.protocol import JobRecord, JobSpec, Member, Result, RingState

A = Member(id="a", location=0, ip="127.0.0.1", port=1)
E = Member(id="e", location=1 << 60, ip="127.0.0.1", port=5)
C = Member(id="c", location=1 << 61, ip="127.0.0.1", port=3)
B = Member(id="b", location=1 << 62, ip="127.0.0.1", port=2)
D = Member(id="d", location=3 << 61, ip="127.0.0.1", port=4)


def majority(me: str = "e", epoch: int = 6) -> Membership:
    """The majority side after the partition {a, b} | {c, d, e}: a and b removed at `epoch`."""
    return Membership(me=me, ring=RingState(epoch=epoch, members=[E, C, D], proposer="e"), replicas=3,
                      failure_timeout=2.0, fence_window=1.2, started=0.0)


# ---- whose copies a node takes ---------------------------------------------------------------------------
def test_a_removed_members_late_copies_are_refused():
    m = majority()
    # a, cut off, still believes in the ring of epoch 5 and sends the result it recorded in the window
    why = m.copy_problem("a", 5)
    assert why is not None and "a" in why and "epoch 6" in why


def test_copies_from_members_are_taken():
    m = majority()
    assert m.copy_problem("c", 6) is None
    assert m.copy_problem("d", 5) is None  # a member one ring behind: still a member


def test_copies_from_a_ring_newer_than_ours_are_taken():
    """This node is behind (a joiner it has not heard of yet): the ring follows through heartbeats."""
    m = majority()
    assert m.copy_problem("f", 7) is None
    assert m.copy_problem("f", 6) is not None


# ---- which stored record a copy replaces -----------------------------------------------------------------
MEMBERS = frozenset({"e", "c", "d"})


def test_a_departed_owners_copy_never_replaces_a_members_record():
    assert not copy_replaces(held_owner="c", incoming_owner="a", me="e", members=MEMBERS)


def test_a_members_copy_replaces_an_orphan_and_its_own_older_copy():
    assert copy_replaces(held_owner="a", incoming_owner="c", me="e", members=MEMBERS)
    assert copy_replaces(held_owner="c", incoming_owner="c", me="e", members=MEMBERS)


def test_nothing_replaces_a_record_this_node_owns():
    assert not copy_replaces(held_owner="e", incoming_owner="c", me="e", members=MEMBERS)
    assert not copy_replaces(held_owner="e", incoming_owner="a", me="e", members=MEMBERS)


def test_an_orphans_copy_may_replace_another_orphans():
    assert copy_replaces(held_owner="b", incoming_owner="a", me="e", members=MEMBERS)


# ---- the store carries it out ----------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "jobgrid.sqlite3")
    yield s
    s.close()


def _res(jid: str, node: str, finished: float) -> Result:
    return Result(job_id=jid, state="succeeded", value=b"0", node=node, finished_at=finished)


def test_store_keeps_the_members_record_against_a_departed_owners_copy(store):
    store.put_result_replicas("c", [_res("j", "c", 9.0)], [], me="e", members=MEMBERS)
    store.put_result_replicas("a", [_res("j", "a", 3.0)], [], me="e", members=MEMBERS)
    held = store.held_results(["j"])["j"]
    assert (held[0].node, held[0].finished_at, held[1]) == ("c", 9.0, "c")


def test_store_replaces_an_orphan_copy_with_the_members_record(store):
    store.put_result_replicas("a", [_res("j", "a", 3.0)], [], me="e", members=MEMBERS)
    store.put_result_replicas("c", [_res("j", "c", 9.0)], [], me="e", members=MEMBERS)
    held = store.held_results(["j"])["j"]
    assert (held[0].node, held[1]) == ("c", "c")


def test_store_never_replaces_its_own_record(store):
    store.put_jobs([JobRecord(spec=JobSpec(id="j", kind="call", target="jobgrid.examples:noop"), owner="e")])
    store.record_results("e", [_res("j", "e", 1.0)])
    store.put_result_replicas("c", [_res("j", "c", 9.0)], [], me="e", members=MEMBERS)
    held = store.held_results(["j"])["j"]
    assert (held[0].node, held[1]) == ("e", "e")


def test_a_handed_off_orphan_result_never_deletes_a_job_this_node_owns(store):
    """The loss behind the halves-partition scenario's lost job: the promoter of a removed owner's position
    (e) owns the job now (queued); the removed owner's new incarnation hands off its orphan run's result;
    storing that copy deleted e's own job row, the run then reported to e found no job ("unknown"), and
    the job was gone from every node. The copy is kept; e's job stays until a run is reported to it."""
    store.put_jobs([JobRecord(spec=JobSpec(id="j", kind="call", target="jobgrid.examples:noop"), owner="e")])
    store.put_result_replicas("a", [_res("j", "a", 3.0)], [], me="e", members=MEMBERS)
    (rec, state), = store.get_jobs(["j"]).values()
    assert (rec.owner, state) == ("e", "queued")
    assert "j" in store.held_results(["j"])


# ---- the minority's run, met again at reconciliation -------------------------------------------------------
def test_an_orphan_result_of_another_run_is_a_second_run():
    ours = {"j": _res("j", "a", 3.0), "k": _res("k", "a", 4.0), "q": _res("q", "a", 5.0)}
    grids = {"j": _res("j", "c", 9.0),   # the majority ran it again: ours is the second run
             "k": _res("k", "a", 4.0),   # the same record reached by two paths: no second run
             "q": JobRecord(spec=JobSpec(id="q", kind="call", target="jobgrid.examples:noop"), owner="c")}
    assert second_runs(ours, grids) == ["j"]  # q: the grid has no result yet, ours goes to its owner
