"""Membership decisions and the store's queue transitions, checked without sockets or sleeps."""

from __future__ import annotations

import sqlite3
import time

import pytest

from jobgrid.membership import AddLock, Membership, join_backoff
from jobgrid.node.store import Store
from jobgrid.protocol import JobRecord, JobSpec, Member, Result, RingState

A = Member(id="a", location=0, ip="127.0.0.1", port=1)
C = Member(id="c", location=1 << 61, ip="127.0.0.1", port=3)
B = Member(id="b", location=1 << 62, ip="127.0.0.1", port=2)
D = Member(id="d", location=3 << 61, ip="127.0.0.1", port=4)
E = Member(id="e", location=1 << 60, ip="127.0.0.1", port=5)
ALL = [A, B, C, D]

FT, FENCE = 2.0, 1.2


def mem(me: str, members=ALL, epoch: int = 5, started: float = 0.0, replicas: int = 3) -> Membership:
    return Membership(me=me, ring=RingState(epoch=epoch, members=list(members), proposer="a"), replicas=replicas,
                      failure_timeout=FT, fence_window=FENCE, started=started)


# ---- quorum ---------------------------------------------------------------------------------------

def test_every_member_gets_grace_right_after_start():
    m = mem("a")
    assert m.has_quorum(0.5)
    assert all(m.status(x.id, 0.5) == "alive" for x in ALL)


def test_quorum_needs_a_strict_majority_of_the_last_agreed_ring():
    m = mem("a")
    now = 10.0
    assert not m.has_quorum(now)          # nobody answered: alone is 1 of 4
    m.on_reply("b", sent_at=9.9)
    assert not m.has_quorum(now)          # 2 of 4 is not a majority
    m.on_reply("c", sent_at=9.9)
    assert m.has_quorum(now)              # 3 of 4


def test_stale_replies_do_not_count_towards_quorum():
    m = mem("a", members=[A, B, C])
    now = 10.0
    m.on_reply("b", sent_at=now - FENCE - 0.1)  # the reply waited in a socket while we were paused
    assert not m.has_quorum(now)
    m.on_reply("b", sent_at=now - 0.1)
    assert m.has_quorum(now)
    m.on_reply("b", sent_at=1.0)  # an older send time never moves contact backwards
    assert m.contact["b"] == now - 0.1


def test_a_node_outside_the_ring_never_has_quorum():
    m = mem("z")
    assert not m.is_member
    assert not m.has_quorum(0.1)


def test_status_goes_alive_suspect_dead_with_silence():
    m = mem("a")
    m.on_reply("b", sent_at=10.0)
    assert m.status("b", 10.5) == "alive"
    assert m.status("b", 10.0 + FENCE + 0.1) == "suspect"
    assert m.status("b", 10.0 + FT + 0.1) == "dead"
    assert m.status("a", 1000.0) == "alive"  # never dead to itself


# ---- leader and removals -----------------------------------------------------------------------

def test_leader_is_the_lowest_alive_position():
    m = mem("b")
    assert m.leader(0.5) == "a"
    now = 10.0
    for p in ("c", "d"):
        m.on_reply(p, sent_at=now - 0.1)
    assert m.leader(now) == "c"  # a (position 0) is dead; c has the lowest position left


def test_only_a_leader_with_quorum_proposes_removals():
    now = 10.0
    leader = mem("a")
    leader.on_reply("b", now - 0.1)
    leader.on_reply("c", now - 0.1)
    new = leader.propose_removals(now)
    assert new is not None
    assert new.epoch == 6 and new.proposer == "a"
    assert {m.id for m in new.members} == {"a", "b", "c"}

    follower = mem("b")
    follower.on_reply("a", now - 0.1)
    follower.on_reply("c", now - 0.1)
    assert follower.propose_removals(now) is None  # d is dead, but b is not the leader

    lonely = mem("a")
    lonely.on_reply("b", now - 0.1)  # 2 of 4: leader, but no quorum
    assert lonely.propose_removals(now) is None


def test_no_proposal_when_nobody_is_dead():
    m = mem("a")
    assert m.propose_removals(0.5) is None


# ---- adopting rings ----------------------------------------------------------------------------

def test_adopt_takes_only_higher_epoch_proposer_keys():
    m = mem("a")
    same = RingState(epoch=5, members=[A, B], proposer="a")
    older = RingState(epoch=4, members=[A, B], proposer="zz")
    assert m.adopt(same, 1.0) is None
    assert m.adopt(older, 1.0) is None
    assert len(m.ring.members) == 4
    tie_break = RingState(epoch=5, members=[A, B, C, D, E], proposer="b")
    ch = m.adopt(tie_break, 1.0)
    assert ch is not None and [x.id for x in ch.added] == ["e"]
    assert m.ring == tie_break
    assert m.contact["e"] == 1.0  # a newcomer starts with a full timeout of grace


def test_first_surviving_successor_promotes_and_others_hand_off():
    new = RingState(epoch=6, members=[A, B, D], proposer="a")  # c left; b follows it clockwise
    b, d, a = mem("b"), mem("d"), mem("a")
    ch_b = b.adopt(new, 1.0)
    assert ch_b is not None and ch_b.promote == (C,) and ch_b.handoff == ()
    ch_d = d.adopt(new, 1.0)
    assert ch_d is not None and ch_d.promote == () and ch_d.handoff == ((C, B),)
    ch_a = a.adopt(new, 1.0)
    assert ch_a is not None and ch_a.removed == (C,) and ch_a.successors_changed  # a's successors were c, b
    assert ch_a.i_am_member


def test_two_neighbours_gone_promote_to_the_next_survivor():
    new = RingState(epoch=6, members=[A, D], proposer="a")
    ch = mem("d").adopt(new, 1.0)
    assert ch is not None and set(ch.promote) == {B, C}


def test_a_removed_node_learns_it_is_out():
    ch = mem("c").adopt(RingState(epoch=6, members=[A, B, D], proposer="a"), 1.0)
    assert ch is not None and not ch.i_am_member and ch.promote == () and ch.handoff == ()


def test_successors_are_r_minus_1_clockwise_with_wrap():
    m = mem("d")
    assert [x.id for x in m.successors("d")] == ["a", "c"]
    assert [x.id for x in m.successors("b")] == ["d", "a"]
    assert m.promoter_for(C.location + 1).id == "b"


def test_with_joined_bumps_the_epoch_and_names_the_newcomer():
    new = mem("a").with_joined(E)
    assert new.epoch == 6 and new.proposer == "e" and E in new.members


# ---- add lock and join back-off ----------------------------------------------------------------

def test_add_lock_admits_one_joiner_until_release_or_expiry():
    lock = AddLock()
    assert lock.acquire("x", now=0.0, ttl=5.0)
    assert not lock.acquire("y", now=1.0, ttl=5.0)
    assert lock.acquire("x", now=2.0, ttl=5.0)  # the holder may renew
    assert lock.current(3.0) == "x"
    assert not lock.release("y")
    assert lock.release("x")
    assert lock.current(3.0) is None
    assert lock.acquire("y", now=3.0, ttl=5.0)


def test_add_lock_expires_when_its_holder_dies_mid_join():
    lock = AddLock()
    assert lock.acquire("x", now=0.0, ttl=5.0)
    assert lock.current(4.9) == "x"
    assert lock.current(5.0) is None
    assert lock.acquire("y", now=5.0, ttl=5.0)


def test_join_backoff_grows_is_capped_and_randomised():
    mids = [join_backoff(a, 0.5) for a in range(8)]
    assert mids[:5] == sorted(mids[:5]) and mids[0] < mids[4]
    assert max(mids) == pytest.approx(2.0)
    assert join_backoff(2, 0.0) != join_backoff(2, 0.9)
    for a in range(10):
        base = min(2.0, 0.05 * 2 ** a)
        assert 0.5 * base <= join_backoff(a, 0.0) and join_backoff(a, 0.999) < 1.5 * base


# ---- the store on a real SQLite file --------------------------------------------------------------

def rec(i: str, owner: str = "me", priority: int = 0) -> JobRecord:
    return JobRecord(spec=JobSpec(id=i, kind="call", target="jobgrid.examples:noop", priority=priority), owner=owner)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db" / "jobgrid.sqlite3")
    yield s
    s.close()


def test_store_runs_in_wal_mode(store, tmp_path):
    db = sqlite3.connect(str(store.path))
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    finally:
        db.close()


def test_lease_hands_out_highest_priority_first_then_oldest(store):
    store.put_jobs([rec("low1", priority=-1), rec("zero1"), rec("zero2"), rec("low2", priority=-1)])
    store.put_jobs([rec("top", priority=5), rec("zero3")])
    now = time.time()
    got = [r.spec.id for r in store.lease("me", "runner", 10, now + 3, now)]
    assert got == ["top", "zero1", "zero2", "zero3", "low1", "low2"]
    assert store.counts("me")["leased"] == 6


def test_put_jobs_is_idempotent_by_id(store):
    assert store.put_jobs([rec("j1"), rec("j2")]) == ["j1", "j2"]
    assert store.put_jobs([rec("j1"), rec("j3")]) == ["j3"]
    assert store.counts("me")["queued"] == 3


def test_first_result_wins_and_duplicates_are_reported(store):
    store.put_jobs([rec("j1")])
    first = Result(job_id="j1", state="succeeded", node="n1")
    second = Result(job_id="j1", state="failed", node="n2")
    recorded, dups, unknown = store.record_results("me", [first])
    assert [r.job_id for r in recorded] == ["j1"] and dups == [] and unknown == []
    recorded, dups, unknown = store.record_results("me", [second])
    assert recorded == [] and dups == ["j1"]
    assert store.get_results(["j1"])["j1"].node == "n1"
    assert store.counts("me")["active"] == 0  # the job left the queue


def test_results_for_jobs_we_do_not_own_are_unknown(store):
    store.upsert_replicas([rec("r1", owner="other")])
    recorded, dups, unknown = store.record_results("me", [Result(job_id="r1", state="succeeded"),
                                                         Result(job_id="nope", state="succeeded")])
    assert recorded == [] and dups == [] and sorted(unknown) == ["nope", "r1"]


def test_replicas_count_as_backup_and_adopt_promotes_them(store):
    store.put_jobs([rec("mine")])
    store.upsert_replicas([rec("b1", owner="dead"), rec("b2", owner="dead"), rec("o1", owner="other")])
    assert store.counts("me") == {"queued": 1, "leased": 0, "active": 1, "backup": 3}
    assert store.adopt("dead", "me") == 2
    assert store.counts("me") == {"queued": 3, "leased": 0, "active": 3, "backup": 1}
    assert store.drop_owner("other") == 1
    assert store.counts("me")["backup"] == 0


def test_drop_owner_only_touches_the_given_ids_of_that_owner(store):
    store.upsert_replicas([rec("x1", owner="o"), rec("x2", owner="o"), rec("y1", owner="p")])
    assert store.drop_owner("o", ["x1", "y1"]) == 1
    assert set(store.get_jobs(["x1", "x2", "y1"])) == {"x2", "y1"}


def test_expired_leases_go_back_to_the_queue(store):
    store.put_jobs([rec("j1")])
    now = time.time()
    [leased] = store.lease("me", "r", 1, now + 1, now)
    assert leased.attempts == 1
    assert store.lease("me", "r", 1, now + 1, now) == []
    assert store.expire_leases("me", now + 2) == ["j1"]
    [again] = store.lease("me", "r", 1, now + 5, now + 2)
    assert again.attempts == 2


def test_reopening_the_file_keeps_every_row(tmp_path):
    path = tmp_path / "jobgrid.sqlite3"
    s = Store(path)
    s.put_jobs([rec(f"j{i}") for i in range(50)])
    s.upsert_replicas([rec("b1", owner="other")])
    s.record_results("me", [Result(job_id="j0", state="succeeded")])
    s.set_meta("node_id", b"abc")
    s.close()
    s2 = Store(path)
    try:
        assert s2.counts("me") == {"queued": 49, "leased": 0, "active": 49, "backup": 1}
        assert s2.get_results(["j0"])["j0"].state == "succeeded"
        assert s2.get_meta("node_id") == b"abc"
        s2.put_jobs([rec("late")])
        ids = [r.spec.id for r in s2.lease("me", "r", 100, time.time() + 3, time.time())]
        assert ids[-1] == "late"  # sequence numbers continue after a reopen: the newcomer is youngest
    finally:
        s2.close()
