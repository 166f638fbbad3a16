"""The pure graceful-leave decisions (jobgrid/leave.py): the leaver's steps in order, and when a member
takes a departure and which ring it proposes. No sockets, no clock."""

from __future__ import annotations

from jobgrid import leave as lv
from jobgrid.membership import Membership
from jobgrid.protocol import Member, RingState

POLICY = lv.LeavePolicy.of(grace=10.0, timeout=20.0)
PLAN = lv.Leave(POLICY, started=100.0)


def view(**kw) -> lv.LeaveView:
    base = dict(running=0, members=3, in_ring=True, handed_over=False, replicas=3, rows_left=True)
    base.update(kw)
    return lv.LeaveView(**base)


def ring(n: int, epoch: int = 5) -> RingState:
    return RingState(epoch=epoch, members=[Member(id=f"n{i}", location=i * 1000, ip="127.0.0.1", port=9000 + i)
                                           for i in range(n)], proposer="n0", replicas=3)


def membership(me: str, r: RingState, now: float = 50.0, alive: tuple[str, ...] | None = None) -> Membership:
    m = Membership(me=me, ring=r, replicas=3, failure_timeout=2.0, fence_window=1.2, started=0.0)
    for x in r.members:
        if x.id != me and (alive is None or x.id in alive):
            m.on_reply(x.id, now)
    return m


# ---- the leaver's steps --------------------------------------------------------------------------------------
def test_running_jobs_are_waited_for_until_the_grace_period_ends():
    assert PLAN.next(101.0, view(running=2)) == lv.WaitRuns(until=110.0)


def test_past_the_grace_period_the_leases_of_running_jobs_are_handed_back():
    assert PLAN.next(110.0, view(running=2)) == lv.HandBackLeases()


def test_with_nothing_running_the_copies_are_handed_over_before_the_departure_is_announced():
    assert PLAN.next(101.0, view()) == lv.HandOver()
    assert PLAN.next(101.0, view(handed_over=True)) == lv.Announce()


def test_a_result_not_yet_reported_counts_as_running():
    """busy() counts unreported results: the ring must not drop us while a finished run's result is here."""
    assert isinstance(PLAN.next(101.0, view(running=1, handed_over=True)), lv.WaitRuns)


def test_out_of_the_ring_the_node_exits_0():
    assert PLAN.next(101.0, view(in_ring=False, members=2)) == lv.Exit(lv.EXIT_LEFT, "left the ring")


def test_with_one_copy_only_the_rows_are_handed_off_after_leaving_the_ring():
    assert PLAN.next(101.0, view(in_ring=False, replicas=1, rows_left=True)) == lv.HandOff()
    assert PLAN.next(101.0, view(in_ring=False, replicas=1, rows_left=False)).code == lv.EXIT_LEFT  # type: ignore[union-attr]


def test_the_last_member_lets_its_running_jobs_finish_then_stops_with_its_jobs_kept():
    assert isinstance(PLAN.next(101.0, view(members=1, running=1)), lv.WaitRuns)
    step = PLAN.next(101.0, view(members=1))
    assert isinstance(step, lv.Exit) and step.code == lv.EXIT_LEFT and "data dir" in step.reason


def test_past_the_leave_timeout_the_node_exits_as_failed_whatever_the_step():
    for v in (view(running=3), view(), view(handed_over=True), view(in_ring=False, replicas=1)):
        step = PLAN.next(120.0, v)
        assert isinstance(step, lv.Exit) and step.code == lv.EXIT_TIMED_OUT


def test_the_grace_period_leaves_a_quarter_of_the_timeout_to_hand_over():
    assert lv.LeavePolicy.of(grace=45.0, timeout=60.0).grace == 45.0
    assert lv.LeavePolicy.of(grace=45.0, timeout=10.0).grace == 7.5


# ---- the member asked ----------------------------------------------------------------------------------------
def test_a_member_with_quorum_proposes_the_ring_without_the_leaver():
    r = ring(5)
    new = lv.departure_ring(membership("n2", r), "n1", 50.0, "n1")
    assert isinstance(new, RingState)
    assert [m.id for m in new.members] == ["n0", "n2", "n3", "n4"]
    assert new.epoch == 6 and new.proposer == "n2" and new.replicas == 3
    assert membership("n2", r).ring_problem(new) is None  # a ring every member accepts


def test_a_departure_of_a_node_no_longer_in_the_ring_is_nothing_to_do():
    assert lv.departure_ring(membership("n2", ring(5)), "gone", 50.0, "gone") is None


def test_no_departure_without_quorum_or_without_the_leaver_holding_the_add_lock():
    """Ring changes one at a time: two departures proposed at once would make two rings of one epoch, and the
    one that wins would still list the other leaver, gone by then."""
    r = ring(5)
    lonely = membership("n2", r, alive=("n1",))
    assert "majority" in str(lv.departure_ring(lonely, "n1", 50.0, "n1"))
    assert "held by joiner" in str(lv.departure_ring(membership("n2", r), "n1", 50.0, "joiner"))
    assert "held by n3" in str(lv.departure_ring(membership("n2", r), "n1", 50.0, "n3"))
    assert "does not hold" in str(lv.departure_ring(membership("n2", r), "n1", 50.0, None))


def test_no_departure_for_another_ring_than_the_one_the_copies_were_handed_over_for():
    r = ring(5, epoch=5)
    assert "epoch 4" in str(lv.departure_ring(membership("n2", r), "n1", 50.0, "n1", epoch=4))
    assert isinstance(lv.departure_ring(membership("n2", r), "n1", 50.0, "n1", epoch=5), RingState)


def test_no_departure_in_the_own_name_or_from_a_non_member():
    r = ring(3)
    assert isinstance(lv.departure_ring(membership("n1", r), "n1", 50.0, "n1"), str)
    assert isinstance(lv.departure_ring(membership("x", r), "n1", 50.0, "n1"), str)


def test_the_leaver_asks_its_successor_first_then_the_others_clockwise():
    r = ring(5)
    assert [m.id for m in lv.ask_order(r, "n2")] == ["n3", "n4", "n0", "n1"]
    assert [m.id for m in lv.ask_order(r, "n4")] == ["n0", "n1", "n2", "n3"]
    # the first asked is the member that covers the leaver's position once it is gone: it promotes its copies
    without = RingState(epoch=6, members=[m for m in r.members if m.id != "n2"], proposer="n3", replicas=3)
    assert membership("n3", r).promoter_for(2000, without).id == lv.ask_order(r, "n2")[0].id  # type: ignore[union-attr]
