"""Ring rounds: votes per epoch, majority commits, and never two committed rings for one epoch."""

from __future__ import annotations

import random

import pytest

from jobgrid.protocol import Member, RingState
from jobgrid.swim.messages import RingDelta
from jobgrid.swim.rounds import Acceptor, Round

VOTERS = ["a", "b", "c", "d", "e"]
BASE = RingState(epoch=7, members=[Member(id=v, location=i, ip="127.0.0.1", port=1000 + i)
                                   for i, v in enumerate(VOTERS)], proposer="a")


def change(proposer: str, removed: list[str]) -> RingDelta:
    return RingDelta(base_epoch=7, base_proposer="a", epoch=8, proposer=proposer, removed=removed)


def test_an_acceptor_promises_only_upwards_and_accepts_only_what_it_promised():
    a = Acceptor()
    a.moved_to(8)
    assert a.prepare(8, (1, "a"))
    assert not a.prepare(8, (0, "z"))
    assert a.prepare(8, (1, "b"))      # (1, "b") > (1, "a")
    assert not a.accept(8, (1, "a"), change("a", ["e"]))
    assert a.accept(8, (1, "b"), change("b", ["d"]))
    assert a.state() == (8, (1, "b"), (1, "b"), change("b", ["d"]))
    assert not a.prepare(9, (5, "a"))  # not the slot after its ring
    a.moved_to(9)                      # a new ring: a fresh slot, nothing promised
    assert a.state() == (9, (0, ""), (0, ""), None)


def test_a_round_commits_its_own_change_with_a_majority():
    r = Round(base=BASE, ballot=(1, "a"), proposal=change("a", ["e"]), deadline=10.0)
    assert r.slot == 8 and r.majority() == 3
    assert r.on_promise("a", True, (0, ""), None) is None
    assert r.on_promise("zz", True, (0, ""), None) is None  # not a voter of ring 7
    assert r.on_promise("b", True, (0, ""), None) is None
    assert r.on_promise("c", True, (0, ""), None) == change("a", ["e"])
    assert not r.on_accepted("a", True)
    assert not r.on_accepted("b", True)
    assert r.on_accepted("c", True)
    assert not r.on_accepted("d", True)  # committed once


def test_a_later_leader_must_finish_the_change_a_voter_already_accepted():
    r = Round(base=BASE, ballot=(2, "b"), proposal=change("b", ["a"]), deadline=10.0)
    r.on_promise("c", True, (1, "a"), change("a", ["e"]))
    r.on_promise("d", True, (0, ""), None)
    value = r.on_promise("e", True, (0, ""), None)
    assert value == change("a", ["e"])  # the accepted value, proposer and all: ring key (8, "a")


def test_the_highest_accepted_ballot_wins_among_several():
    r = Round(base=BASE, ballot=(5, "c"), proposal=change("c", []), deadline=10.0)
    r.on_promise("a", True, (1, "a"), change("a", ["e"]))
    r.on_promise("b", True, (3, "b"), change("b", ["d"]))
    assert r.on_promise("c", True, (2, "z"), change("z", ["a"])) == change("b", ["d"])


def test_refusals_make_a_round_hopeless_before_its_deadline():
    r = Round(base=BASE, ballot=(1, "a"), proposal=change("a", ["e"]), deadline=10.0)
    r.on_promise("b", False, (0, ""), None, promised=(4, "d"))
    r.on_promise("c", False, (0, ""), None)
    assert not r.hopeless()
    r.on_promise("d", False, (0, ""), None)
    assert r.hopeless() and r.refused_by == (4, "d")


@pytest.mark.parametrize("seed", range(300))
def test_two_or_three_dueling_leaders_never_commit_two_rings_for_one_epoch(seed):
    """Leaders with rising ballots and their own changes; messages delivered in random order, some lost."""
    rng = random.Random(seed)
    acceptors = {v: Acceptor(slot=8) for v in VOTERS}
    leaders = rng.sample(VOTERS, rng.choice([2, 3]))
    rounds: list[Round] = []
    committed: list[RingDelta] = []
    inbox: list[tuple] = []  # ("prepare"|"accept"|"promise"|"accepted", round index, voter, payload)

    def start(leader: str, n: int) -> None:
        r = Round(base=BASE, ballot=(n, leader), proposal=change(leader, [rng.choice(VOTERS)]), deadline=0)
        rounds.append(r)
        for v in VOTERS:
            inbox.append(("prepare", len(rounds) - 1, v, None))

    for i, leader in enumerate(leaders):
        start(leader, rng.randint(1, 3))
    steps = 0
    while inbox and steps < 2000:
        steps += 1
        kind, ri, voter, payload = inbox.pop(rng.randrange(len(inbox)))
        if rng.random() < 0.15:
            continue  # lost
        r, acc = rounds[ri], acceptors[voter]
        if kind == "prepare":
            ok = acc.prepare(8, r.ballot)
            inbox.append(("promise", ri, voter, (ok, acc.accepted_ballot, acc.accepted, acc.promised)))
        elif kind == "promise":
            ok, ab, av, pb = payload
            value = r.on_promise(voter, ok, ab, av, pb)
            if value is not None:
                for v in VOTERS:
                    inbox.append(("accept", ri, v, value))
            elif r.hopeless() and rng.random() < 0.5 and len(rounds) < 12:
                start(r.ballot[1], max(r.refused_by[0], r.ballot[0]) + 1)  # try again, higher
        elif kind == "accept":
            inbox.append(("accepted", ri, voter, acc.accept(8, r.ballot, payload)))
        elif kind == "accepted" and r.on_accepted(voter, payload):
            assert r.value is not None
            committed.append(r.value)
    assert all(c == committed[0] for c in committed), committed
