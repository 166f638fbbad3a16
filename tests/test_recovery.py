"""The pure rules for bringing a grid back after an outage (jobgrid.recovery)."""

from __future__ import annotations

from jobgrid.protocol import Member, RecoveryState, RingState
from jobgrid import recovery
from jobgrid.recovery import decide, describe

M = [Member(id=n, location=i * 1000, ip="127.0.0.1", port=9000 + i) for i, n in enumerate("abcde")]
SAVED = RingState(epoch=7, members=M, proposer="a")
EMPTY = RingState(epoch=0, members=[])


def back(node: str, saved: RingState | None = SAVED) -> RecoveryState:
    return RecoveryState(node=node, live=False, ring=EMPTY, saved=saved)


def test_alone_or_with_a_minority_it_waits_and_names_who_it_waits_for():
    d = decide("a", SAVED, [back("b")])
    assert d.action == "wait" and d.back == ("a", "b") and [m.id for m in d.missing] == ["c", "d", "e"]
    text = describe(d)
    assert "2 of 5 members back, 3 needed" in text and "c at 127.0.0.1:9002" in text
    assert "--force-new-cluster" in text


def test_a_majority_of_the_saved_ring_back_resumes_that_ring():
    d = decide("a", SAVED, [back("b"), back("c")])
    assert d.action == "resume" and d.ring == SAVED and [m.id for m in d.missing] == ["d", "e"]


def test_a_live_grid_wins_over_resuming():
    live_ring = RingState(epoch=9, members=M[:3], proposer="b")
    d = decide("d", SAVED, [back("e"), RecoveryState(node="b", live=True, ring=live_ring, saved=SAVED)])
    assert d.action == "live" and d.ring == live_ring


def test_the_newest_saved_ring_counts_and_a_member_left_out_of_it_waits():
    newer = RingState(epoch=8, members=M[:3], proposer="a")  # d and e were removed before the outage
    assert decide("d", SAVED, [back("e"), back("a", newer)]).action == "wait"
    d = decide("a", newer, [back("b", newer), back("d"), back("e")])
    assert d.action == "resume" and d.ring == newer and d.back == ("a", "b")


def test_force_brings_up_the_members_that_are_back_and_removes_the_rest():
    d = decide("b", SAVED, [back("c")], force=True)
    assert d.action == "force" and d.base == SAVED
    assert [m.id for m in d.ring.members] == ["b", "c"] and d.ring.key() > SAVED.key()
    assert decide("b", SAVED, [back("c"), back("d")], force=True).action == "resume"  # a majority needs no force


def test_peer_addresses_expand_a_join_name_to_every_live_member_but_this_node():
    """Swarm's tasks.<service> names every live task, this node's own address among them once it is listed."""
    contacts = [("tasks.jobgrid_node", 8000), ("10.0.1.7", 8000), ("10.0.1.5", 8000)]
    resolved = {"tasks.jobgrid_node": ["10.0.1.5", "10.0.1.6", "10.0.1.9"], "10.0.1.7": ["10.0.1.7"],
                "10.0.1.5": ["10.0.1.5"]}
    assert recovery.peer_addresses(contacts, resolved, ("10.0.1.9", 8000)) == [
        ("10.0.1.5", 8000), ("10.0.1.6", 8000), ("10.0.1.7", 8000)]
    # a name with no live member behind it yet gives nothing to ask (the joiner asks again next round)
    assert recovery.peer_addresses([("tasks.jobgrid_node", 8000)], {}, ("10.0.1.9", 8000)) == []
    # the same address on another port is another node
    assert recovery.peer_addresses([("h", 8001)], {"h": ["10.0.1.9"]}, ("10.0.1.9", 8000)) == [("10.0.1.9", 8001)]
