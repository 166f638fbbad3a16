"""`SwimMembership` fed messages and timers, its outputs compared: the shell's whole contract."""

from __future__ import annotations

import random

import pytest

from jobgrid.errors import ConfigError
from jobgrid.membership import Membership
from jobgrid.protocol import Member, RingState
from jobgrid.swim import Step, SwimConfig, SwimMembership, membership_mode
from jobgrid.swim.joins import place
from jobgrid.swim.messages import (
    Accept, Accepted, Ack, JoinRedirect, JoinReply, JoinRequest, NodeUpdate, Ping, Prepare, Promise, RingDelta,
    RingPull, RingPush,
)

CFG = SwimConfig()
Q = 1 << 61


def mk(i: str, loc: int) -> Member:
    return Member(id=i, location=loc, ip="127.0.0.1", port=7000 + ord(i[0]))


A, B, C, D, E = mk("a", 0), mk("b", Q), mk("c", 2 * Q), mk("d", 3 * Q), mk("e", 3 * Q + Q // 2)
RING = RingState(epoch=5, members=[A, B, C, D, E], proposer="a")


def node(me: Member, ring: RingState = RING, now: float = 0.0) -> SwimMembership:
    return SwimMembership(me.id, (me.ip, me.port), CFG, random.Random(1), now, ring=ring)


def hdr(m: Member, ring: RingState = RING) -> dict:
    return {"sender": m.id, "ip": m.ip, "port": m.port, "epoch": ring.epoch, "proposer": ring.proposer}


def kinds(step: Step) -> list[tuple[str, str]]:
    return [(type(s.msg).__name__, s.to) for s in step.send]


def mark(n: SwimMembership, who: str, state: str, now: float = 0.0) -> None:
    n.det.apply(NodeUpdate(node=who, state=state, incarnation=0, origin="zz"), now)  # type: ignore[arg-type]


# ---- modes and settings ------------------------------------------------------------------------------

def test_auto_mode_runs_all_to_all_up_to_32_members_and_swim_above():
    assert membership_mode("auto", 32) == "all-to-all"
    assert membership_mode("auto", 33) == "swim"
    assert membership_mode("swim", 3) == "swim" and membership_mode("all-to-all", 1000) == "all-to-all"
    with pytest.raises(ConfigError, match="membership must be one of"):
        membership_mode("gossip", 5)


@pytest.mark.parametrize("kw, msg", [({"probe_timeout": 0.5}, "shorter than the period"),
                                     ({"indirect_checks": 0}, "indirect_checks"),
                                     ({"fence_fraction": 1.0}, "fence_fraction"),
                                     ({"period": -1}, "period")])
def test_bad_swim_settings_are_refused_with_a_reason(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        SwimConfig(**kw)


# ---- starting and joining ------------------------------------------------------------------------------

def test_a_founder_holds_a_ring_of_itself_at_position_zero_and_has_quorum():
    n = SwimMembership("a", ("127.0.0.1", 1), CFG, random.Random(1), 0.0)
    step = n.found(0.0)
    [(ring, change)] = step.adopted
    assert ring == RingState(epoch=1, members=[Member(id="a", location=0, ip="127.0.0.1", port=1)], proposer="a")
    assert change.i_am_member and n.has_quorum(100.0)  # a ring of one is its own majority


def test_joiners_are_placed_one_after_the_other_in_the_middle_of_the_largest_gap():
    one = RingState(epoch=1, members=[Member(id="a", location=0, ip="h", port=1)], proposer="a")
    got = place(one, set(), [("j1", "h", 2), ("j2", "h", 3), ("j3", "h", 4)])
    assert [m.location for m in got] == [1 << 62, 1 << 61, 3 << 61]
    assert [m.location for m in place(RING, {"c"}, [("j", "h", 5)])] == [2 * Q]  # b..d, c left: c's place
    assert [m.location for m in place(RING, set(), [("j", "h", 5)])] == [Q // 2]


def test_a_member_that_is_not_the_leader_redirects_a_joiner_there():
    b = node(B)
    j = Member(id="j", location=0, ip="127.0.0.1", port=9000)
    step = b.receive(JoinRequest(**hdr(j, RingState(epoch=0, members=[]))), 1.0)
    assert kinds(step) == [("JoinRedirect", "j")]
    assert step.send[0].msg.leader == A and step.send[0].addr == ("127.0.0.1", 9000)


def test_the_leader_admits_a_joiner_at_once_into_a_ring_of_one_and_welcomes_it():
    a = SwimMembership("a", ("127.0.0.1", 1), CFG, random.Random(1), 0.0)
    a.found(0.0)
    step = a.receive(JoinRequest(sender="j", ip="127.0.0.1", port=2, epoch=0, proposer=""), 1.0)
    [(ring, change)] = step.adopted
    assert ring.epoch == 2 and ring.proposer == "a"
    assert change.added == (Member(id="j", location=1 << 62, ip="127.0.0.1", port=2),)
    assert kinds(step) == [("JoinReply", "j")] and step.send[0].msg.ring == ring
    assert ("committed", "2:a") in step.events


def test_a_joiner_follows_the_redirect_and_becomes_a_member_on_its_welcome():
    j = SwimMembership("j", ("127.0.0.1", 9000), CFG, random.Random(1), 0.0)
    step = j.join([("127.0.0.1", 7098)], 0.0)
    assert kinds(step) == [("JoinRequest", "")] and step.send[0].addr == ("127.0.0.1", 7098)
    step = j.receive(JoinRedirect(**hdr(B), leader=A), 0.1)
    assert kinds(step) == [("JoinRequest", "a")] and step.send[0].addr == (A.ip, A.port)
    welcome = RingState(epoch=6, members=[*RING.members, Member(id="j", location=Q // 2, ip="127.0.0.1", port=9000)],
                        proposer="a")
    step = j.receive(JoinReply(**hdr(A, welcome), ring=welcome), 0.2)
    assert [r for r, _ in step.adopted] == [welcome] and j.is_member and j.has_quorum(0.3)
    assert j.tick(10.0).send  # a member now: it probes
    assert not [s for s in j.tick(20.0).send if isinstance(s.msg, JoinRequest)]


def test_a_joiner_with_no_answer_asks_again_after_the_retry_time():
    j = SwimMembership("j", ("127.0.0.1", 9000), CFG, random.Random(1), 0.0)
    j.join([("127.0.0.1", 1), ("127.0.0.1", 2)], 0.0)
    assert j.next_timer() == CFG.join_retry_periods * CFG.period
    assert j.tick(2.9).send == []
    assert [s.addr for s in j.tick(3.0).send] == [("127.0.0.1", 2)]  # the next contact


# ---- quorum -----------------------------------------------------------------------------------------

def test_quorum_needs_recent_answers_and_a_majority_held_alive():
    a = node(A)
    assert a.has_quorum(0.1)
    window = CFG.fence_window(5)
    assert window == pytest.approx(0.5 * 4 * 0.5)
    assert a.has_quorum(window) and not a.has_quorum(window + 0.01)  # cut off: no answered probe for too long
    a.det.last_ack = 10.0
    mark(a, "b", "suspect", 10.0)
    mark(a, "c", "dead", 10.0)
    assert a.has_quorum(10.1)                 # 3 of 5 held alive
    mark(a, "d", "suspect", 10.0)
    assert not a.has_quorum(10.1)             # 2 of 5


def test_a_node_whose_probes_mostly_fail_fences_itself():
    a = node(A)
    a.det.outcomes = [True] + [False] * 7
    assert not a.has_quorum(0.1)
    a.det.outcomes = [True, True] + [False] * 6
    assert a.has_quorum(0.1)


def test_a_paused_node_is_fenced_until_a_probe_sent_after_the_pause_is_answered():
    a = node(A)
    t0 = a.next_timer()
    [s] = a.tick(t0).send
    a.receive(Ack(**hdr(mk(s.to, 0)), seq=s.msg.seq, about=s.to), t0 + 0.01)
    assert a.det.last_ack == t0  # the send time counts, not the arrival
    later = 50.0  # resumed after a long pause
    assert not a.has_quorum(later)
    step = a.tick(later)
    [s] = [s for s in step.send if isinstance(s.msg, Ping)]
    a.receive(Ack(**hdr(mk(s.to, 0)), seq=s.msg.seq, about=s.to), later + 0.01)
    assert a.has_quorum(later + 0.01)


# ---- removals through majority rounds -----------------------------------------------------------------

def test_the_leader_removes_a_dead_member_with_a_majority_of_votes():
    a = node(A)
    mark(a, "e", "dead", 0.0)
    step = a.tick(0.01)
    prepares = [(s.to, s.msg) for s in step.send if isinstance(s.msg, Prepare)]
    assert sorted(t for t, _ in prepares) == ["b", "c", "d"]  # not the dead one
    assert all(p.slot == 6 and p.round == 1 for _, p in prepares)
    step = a.receive(Promise(**hdr(B), slot=6, round=1, leader="a", ok=True), 0.02)
    assert step.send == []  # a and b: 2 of 5
    step = a.receive(Promise(**hdr(C), slot=6, round=1, leader="a", ok=True), 0.03)
    accepts = [s.msg for s in step.send if isinstance(s.msg, Accept)]
    want = RingDelta(base_epoch=5, base_proposer="a", epoch=6, proposer="a", added=[], removed=["e"])
    assert len(accepts) == 3 and all(x.value == want for x in accepts)
    a.receive(Accepted(**hdr(B), slot=6, round=1, leader="a", ok=True), 0.04)
    step = a.receive(Accepted(**hdr(D), slot=6, round=1, leader="a", ok=True), 0.05)
    [(ring, change)] = step.adopted
    assert ring == RingState(epoch=6, members=[A, B, C, D], proposer="a") and change.removed == (E,)
    assert want in a.det.queue.pending()  # the committed change rides on the probe traffic from now on


def test_a_leader_without_quorum_starts_no_round():
    a = node(A)
    mark(a, "c", "dead")
    mark(a, "d", "dead")
    mark(a, "e", "dead")
    assert not a.has_quorum(0.01)
    assert not [s for s in a.tick(0.01).send if isinstance(s.msg, Prepare)]


def test_only_the_lowest_member_not_dead_leads():
    b = node(B)
    mark(b, "e", "dead")
    assert b.leader(0.0) == "a" and not [s for s in b.tick(0.01).send if isinstance(s.msg, Prepare)]
    mark(b, "a", "dead")
    assert b.leader(0.0) == "b"
    assert sorted(s.to for s in b.tick(0.02).send if isinstance(s.msg, Prepare)) == ["c", "d"]


def test_a_voter_promises_once_per_ballot_and_hands_on_what_it_accepted():
    c = node(C)
    s = c.receive(Prepare(**hdr(A), slot=6, round=1), 0.1)
    assert [(type(x.msg).__name__, x.msg.ok) for x in s.send] == [("Promise", True)]
    value = RingDelta(base_epoch=5, base_proposer="a", epoch=6, proposer="a", removed=["e"])
    s = c.receive(Accept(**hdr(A), slot=6, round=1, value=value), 0.2)
    assert s.send[0].msg.ok
    s = c.receive(Prepare(**hdr(B), slot=6, round=0), 0.3)
    assert not s.send[0].msg.ok and s.send[0].msg.promised_round == 1
    s = c.receive(Prepare(**hdr(B), slot=6, round=2), 0.4)
    assert s.send[0].msg.ok and s.send[0].msg.accepted == value and s.send[0].msg.accepted_round == 1


def test_a_voter_one_change_behind_catches_up_from_the_prepare_and_votes():
    c = node(C)
    delta = RingDelta(base_epoch=5, base_proposer="a", epoch=6, proposer="a", removed=["e"])
    ring6 = delta.apply(RING)
    s = c.receive(Prepare(**hdr(A, ring6), slot=7, round=3, catchup=delta), 0.1)
    assert [r.epoch for r, _ in s.adopted] == [6]
    assert [type(x.msg).__name__ for x in s.send] == ["Promise"] and s.send[0].msg.ok
    far = node(D)
    s = far.receive(Prepare(**hdr(A, RingState(epoch=9, members=RING.members, proposer="a")), slot=10, round=1), 0.1)
    assert [(type(x.msg).__name__, getattr(x.msg, "ok", None)) for x in s.send] == [("Promise", False),
                                                                                       ("RingPull", None)]


def test_adopting_a_ring_says_what_it_means_exactly_as_the_all_to_all_membership_does():
    new = RingState(epoch=6, members=[A, B, D, E], proposer="a")
    for me in (A, B, D, E):
        old = Membership(me=me.id, ring=RING, replicas=3, failure_timeout=2, fence_window=1)
        assert node(me).adopt(new, 1.0) == old.adopt(new, 1.0)


# ---- probing and dissemination -----------------------------------------------------------------------

def test_a_ping_is_answered_with_an_ack_carrying_news_and_a_stale_id_gets_nothing():
    b = node(B)
    mark(b, "e", "suspect")
    s = b.receive(Ping(**hdr(A), seq=9, target="b", active=4), 0.1)
    [send] = s.send
    assert isinstance(send.msg, Ack) and send.to == "a" and send.msg.seq == 9 and send.msg.about == "b"
    assert NodeUpdate(node="e", state="suspect", incarnation=0, origin="zz") in send.msg.updates
    assert b.active["a"] == 4
    assert b.receive(Ping(**hdr(A), seq=10, target="b-old"), 0.2).send == []


def test_a_committed_change_learnt_by_gossip_is_adopted_and_passed_on():
    c = node(C)
    delta = RingDelta(base_epoch=5, base_proposer="a", epoch=6, proposer="a", removed=["e"])
    s = c.receive(Ping(**hdr(A, delta.apply(RING)), seq=1, target="c", updates=[delta]), 0.1)
    assert [r for r, _ in s.adopted] == [delta.apply(RING)]
    assert delta in c.det.queue.pending()


def test_a_node_left_behind_asks_a_node_ahead_for_its_ring_after_the_pull_wait():
    c = node(C)
    ahead = RingState(epoch=8, members=[A, B, C, D], proposer="a")
    assert not [x for x in c.receive(Ping(**hdr(A, ahead), seq=1, target="c"), 1.0).send
                if isinstance(x.msg, RingPull)]
    wait = CFG.pull_periods * CFG.period
    assert c.next_timer() <= 1.0 + wait
    s = c.tick(1.0 + wait)
    assert [(x.to, type(x.msg).__name__) for x in s.send if isinstance(x.msg, RingPull)] == [("a", "RingPull")]
    s = c.receive(RingPush(**hdr(A, ahead), ring=ahead), 1.6)
    assert [r for r, _ in s.adopted] == [ahead]


def test_a_removed_member_learns_it_and_rejoins_as_a_new_incarnation():
    e = node(E)
    out = RingState(epoch=6, members=[A, B, C, D], proposer="a")
    s = e.receive(RingPush(**hdr(A, out), ring=out), 1.0)
    assert s.removed and not e.is_member and not e.has_quorum(1.0)
    s = e.rejoin("e-1", 1.0)
    assert e.me == "e-1" and [type(x.msg).__name__ for x in s.send] == ["JoinRequest"]
    assert s.send[0].msg.sender == "e-1" and s.send[0].addr == (A.ip, A.port)


def test_a_ring_that_breaks_an_invariant_is_refused():
    c = node(C)
    bad = RingState(epoch=6, members=[A, B, C, Member(id="x", location=0, ip="127.0.0.1", port=1)], proposer="a")
    s = c.receive(RingPush(**hdr(A, bad), ring=bad), 1.0)
    assert s.adopted == [] and ("ring_refused", "ring has duplicate member ids or locations") in s.events


def test_the_node_settings_carry_the_membership_mode_and_refuse_an_unknown_one():
    from jobgrid.settings import NodeSettings

    assert NodeSettings(port=9000).membership == "auto" and NodeSettings(port=9000).swim == SwimConfig()
    with pytest.raises(ConfigError, match="membership must be one of all-to-all, swim, auto"):
        NodeSettings(port=9000, membership="gossip")


def test_votes_are_handed_out_to_persist_and_a_restarted_voter_keeps_its_promise():
    c = node(C)
    s = c.receive(Prepare(**hdr(A), slot=6, round=4), 0.1)
    assert s.votes == (6, (4, "a"), (0, ""), None)
    assert c.receive(Ping(**hdr(A), seq=1, target="c"), 0.2).votes is None  # nothing voted: nothing to persist
    again = node(C)  # the same node after a restart, with what it persisted
    again.restore_votes(s.votes)
    s = again.receive(Prepare(**hdr(B), slot=6, round=3), 0.3)
    assert not s.send[0].msg.ok and s.send[0].msg.promised_round == 4
    stale = node(C)
    stale.restore_votes((3, (9, "a"), (0, ""), None))  # votes for an older slot: dropped
    assert stale.acceptor.slot == 6 and stale.acceptor.promised == (0, "")


def test_a_ring_pushed_by_a_stranger_who_was_not_asked_is_refused():
    c = node(C)
    x = Member(id="x", location=5, ip="127.0.0.1", port=9999)
    forged = RingState(epoch=9, members=[x, C], proposer="x")
    s = c.receive(RingPush(**hdr(x, forged), ring=forged), 1.0)
    assert s.adopted == [] and s.events == [("ring_refused", "pushed by x, neither a member nor asked")]
