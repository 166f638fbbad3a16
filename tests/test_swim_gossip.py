"""Piggybacked dissemination: bounded retransmission, least-sent first, newer news replaces older."""

from __future__ import annotations

from jobgrid.swim.config import SwimConfig
from jobgrid.swim.gossip import BroadcastQueue
from jobgrid.swim.messages import NodeUpdate, RingDelta


def up(node: str, state: str = "suspect", inc: int = 0) -> NodeUpdate:
    return NodeUpdate(node=node, state=state, incarnation=inc, origin="x")  # type: ignore[arg-type]


def test_retransmit_limit_is_lambda_times_log_n():
    cfg = SwimConfig()
    assert [cfg.retransmit_limit(n) for n in (1, 9, 10, 99, 100, 999, 1000)] == [4, 4, 8, 8, 12, 12, 16]


def test_each_update_is_sent_at_most_limit_times():
    q = BroadcastQueue()
    q.push(up("a"))
    sent = [q.take(limit=3, max_items=5) for _ in range(5)]
    assert sent == [[up("a")], [up("a")], [up("a")], [], []]
    assert len(q) == 0


def test_least_sent_first_and_newest_first_among_equals():
    q = BroadcastQueue()
    q.push(up("a"))
    assert q.take(limit=10, max_items=1) == [up("a")]
    q.push(up("b"))
    q.push(up("c"))
    assert q.take(limit=10, max_items=2) == [up("c"), up("b")]  # never sent, newest first
    assert q.take(limit=10, max_items=3) == [up("c"), up("b"), up("a")]  # all sent once: newest first
    q.push(up("d"))
    assert q.take(limit=10, max_items=2) == [up("d"), up("c")]  # the unsent one before all others


def test_newer_news_about_the_same_member_replaces_the_older_and_starts_afresh():
    q = BroadcastQueue()
    q.push(up("a", "suspect", 0))
    q.take(limit=2, max_items=1)
    q.push(up("a", "alive", 1))
    assert q.pending() == [up("a", "alive", 1)]
    assert q.take(limit=2, max_items=5) == [up("a", "alive", 1)]
    assert q.take(limit=2, max_items=5) == [up("a", "alive", 1)]
    assert q.take(limit=2, max_items=5) == []


def test_ring_changes_of_different_epochs_travel_side_by_side():
    q = BroadcastQueue()
    d1 = RingDelta(base_epoch=1, base_proposer="a", epoch=2, proposer="a")
    d2 = RingDelta(base_epoch=2, base_proposer="a", epoch=3, proposer="a")
    q.push(d1)
    q.push(d2)
    q.push(up("a"))
    assert q.take(limit=1, max_items=10) == [up("a"), d2, d1]
