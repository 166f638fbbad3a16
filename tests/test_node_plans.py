"""The node's other pure decisions: how a node starts (jobgrid.recovery), R as part of the ring
(Membership, recovery.replicas_problem), which orphans to adopt, hand off or ask about (node/orphans.plan),
and the queue counts kept current between recounts (node/counts)."""

from __future__ import annotations

from jobgrid.membership import Membership
from jobgrid.node.counts import QueueCounts
from jobgrid.node.metrics import Metrics
from jobgrid.node.orphans import Step, plan
from jobgrid.node.store import Store
from jobgrid.protocol import JobRecord, JobSpec, Member, RingState
from jobgrid.recovery import first_step, new_grid, on_contact, replicas_problem

M = [Member(id=n, location=i * 1000, ip="127.0.0.1", port=9000 + i) for i, n in enumerate("abcde")]


def ring(members=M, epoch=5, replicas=0) -> RingState:
    return RingState(epoch=epoch, members=list(members), proposer=members[0].id, replicas=replicas)


# ---- how a node starts ------------------------------------------------------------------------------------
def test_first_step_new_grid_recover_or_contact():
    assert first_step(None, []) == "new-grid"                       # the first node of a grid
    assert first_step(ring(M[:1]), []) == "new-grid"                # a grid of one restarting
    assert first_step(ring(), [("127.0.0.1", 9001)]) == "recover"   # restarted on a data dir that knew a ring
    assert first_step(None, [("127.0.0.1", 9000)]) == "contact"     # a newcomer with a join address


def test_a_new_grid_keeps_its_position_epoch_and_r_or_starts_at_zero_with_the_asked_r():
    fresh = new_grid(None, "a", M[0], None)
    assert (fresh.epoch, fresh.proposer, fresh.replicas, [m.id for m in fresh.members]) == (1, "a", 3, ["a"])
    assert new_grid(None, "a", M[0], 2).replicas == 2
    again = new_grid(ring(M[:1], epoch=9, replicas=5), "a", M[0], None)
    assert (again.epoch, again.replicas) == (10, 5)


def test_on_contact_resume_rejoin_or_join():
    live = ring(M[:3])
    assert on_contact(live, "b", ("127.0.0.1", 9001), None) == "resume"
    assert on_contact(live, "b", ("127.0.0.1", 7777), None) == "join"  # listed elsewhere: not our place
    assert on_contact(ring(M[:2]), "c", ("127.0.0.1", 9002), ring()) == "rejoin"  # removed while away
    assert on_contact(ring(M[:2]), "z", ("127.0.0.1", 9009), None) == "join"


# ---- R belongs to the grid --------------------------------------------------------------------------------
def test_replicas_problem_adopt_when_not_asked_refuse_a_different_one():
    assert replicas_problem(None, ring(replicas=2)) is None
    assert replicas_problem(2, ring(replicas=2)) is None
    assert replicas_problem(3, ring(replicas=0)) is None  # a ring from before R was part of it: 3
    why = replicas_problem(3, ring(replicas=2))
    assert why is not None and "keeps 2 copies" in why and "--replicas 3" in why


def test_every_member_follows_the_rings_r_and_removals_keep_it():
    m = Membership(me="c", ring=RingState(epoch=0, members=[]), replicas=3, failure_timeout=2, fence_window=1.2)
    m.adopt(ring(replicas=2), now=0.0)
    assert m.replicas == 2 and [x.id for x in m.successors("c")] == ["d"]
    assert m.with_joined(Member(id="f", location=5000, ip="127.0.0.1", port=9005)).replicas == 2
    m.adopt(ring(epoch=6, replicas=0), now=0.0)  # an old ring without R does not change it
    assert m.replicas == 2
    m.drained("d")
    assert m.active["d"] == 0


# ---- orphans -----------------------------------------------------------------------------------------------
def test_orphans_go_to_the_node_covering_their_owner_or_are_checked_here():
    me = Member(id="c-2", location=2000, ip="127.0.0.1", port=9002)  # c's second incarnation
    mem = Membership(me="c-2", ring=ring([M[0], me, M[4]]), replicas=3, failure_timeout=2, fence_window=1.2)
    # b's and c's positions are covered by c-2 now, d's by e; "stranger" is known to nobody here
    departed = {"b": M[1], "c": M[2], "d": M[3]}
    steps = plan({"a", "b", "c", "c-2", "d", "stranger"}, mem, "c-2", departed)
    assert steps == [Step("b", "check"), Step("c", "check"), Step("d", "handoff", M[4]), Step("stranger", "check")]


def test_nothing_to_reconcile_for_members_and_ourselves():
    mem = Membership(me="a", ring=ring(), replicas=3, failure_timeout=2, fence_window=1.2)
    assert plan({"a", "b", "e"}, mem, "a", {}) == []


# ---- queue counts -------------------------------------------------------------------------------------------
def test_counts_follow_stored_and_leased_jobs_until_the_next_recount(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    counts = QueueCounts(store, "me", Metrics(), max_age=3600)
    assert counts.get().active == 0
    counts.stored(queued=5, leased=2, waiting=1)
    counts.leased(3)
    c = counts.get()
    assert (c.queued, c.leased, c.waiting, c.active) == (2, 5, 1, 8)
    store.put_jobs([JobRecord(spec=JobSpec(id="j", kind="call", target="m:f"), owner="me")])
    counts.changed()  # a recount: what the store holds
    c = counts.get()
    assert (c.queued, c.leased, c.waiting, c.active) == (1, 0, 0, 1)
