"""Joining a large grid: a leader-sequenced join instead of an add_lock from every server.

The seed's join takes the add_lock of every server (O(N) messages per joiner), and joiners that collide
back off, so a storm of J joiners costs O(J N) messages and is serialised (measured: 8 joiners into 32
nodes took 15-24 s). What the add_lock buys is that each new ring is computed from the latest ring by one
node at a time: positions are distinct and each joiner sits at the middle of the largest gap.

Here the leader (the only node that changes the ring, through a majority round: rounds.py) is that one
node: a joiner sends one `JoinRequest` to any member, which redirects it to its leader; the leader queues
joiners and admits up to `join_batch` of them per ring change, placing them one after the other at the
middle of the largest gap of the ring that also holds the ones placed before them, which is exactly where
the same joiners would have gone joining one by one. The committed ring is sent to each admitted joiner
(`JoinReply`); the others learn it by gossip. A joiner costs O(1) messages plus its share of one round
(O(N) at the leader per batch, not per joiner), and joiners never refuse each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .. import ring as ringmath
from ..protocol import Member, RingState


def place(ring: RingState, removed: set[str], joiners: list[tuple[str, str, int]]) -> list[Member]:
    """Positions for `joiners` (id, ip, port), in order, each at the middle of the largest gap of the ring
    without `removed` and with the joiners placed before it."""
    positions = [m.location for m in ring.members if m.id not in removed]
    out = []
    for nid, ip, port in joiners:
        loc = ringmath.largest_gap_midpoint(positions)
        positions.append(loc)
        out.append(Member(id=nid, location=loc, ip=ip, port=port))
    return out


@dataclass
class JoinQueue:
    """Joiners waiting at the leader, in arrival order (a repeated request keeps its place)."""

    waiting: dict[str, tuple[str, int]] = field(default_factory=dict)

    def add(self, nid: str, ip: str, port: int) -> None:
        if nid not in self.waiting:
            self.waiting[nid] = (ip, port)

    def batch(self, limit: int, is_member: Callable[[str], bool]) -> list[tuple[str, str, int]]:
        for nid in [n for n in self.waiting if is_member(n)]:
            del self.waiting[nid]  # in the ring already
        return [(nid, ip, port) for nid, (ip, port) in list(self.waiting.items())[:limit]]

    def admitted(self, ids: list[str]) -> None:
        for nid in ids:
            self.waiting.pop(nid, None)


@dataclass
class Joiner:
    """The joining node's side: ask a contact, follow redirects, ask again when nobody answers."""

    contacts: list[tuple[str, int]]
    retry: float
    next_try: float = 0.0
    attempt: int = 0
    target: tuple[str, int] | None = None  # where the next request goes (a leader we were sent to)

    def due(self, now: float) -> tuple[str, int] | None:
        """The address to send a `JoinRequest` to now, if one is due."""
        if now < self.next_try or not self.contacts:
            return None
        addr = self.target or self.contacts[self.attempt % len(self.contacts)]
        self.target = None
        self.attempt += 1
        self.next_try = now + self.retry
        return addr

    def redirected(self, leader: Member, now: float) -> tuple[str, int]:
        self.next_try = now + self.retry
        return leader.ip, leader.port
