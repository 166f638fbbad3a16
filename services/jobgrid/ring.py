"""Pure hash-ring placement: positions on a 2**63 ring, gaps, successors.

The first server sits at 0; each newcomer takes the middle of the largest gap
(seed design). Nothing here does IO.
"""

from __future__ import annotations

from collections.abc import Sequence

RING_SIZE = 1 << 63  # positions fit a signed 64-bit integer (SQLite, msgpack)


def gap_after(position: int, following: int) -> int:
    """Clockwise distance from `position` to `following` (a full turn when equal)."""
    d = (following - position) % RING_SIZE
    return d or RING_SIZE


def largest_gap_midpoint(positions: Sequence[int]) -> int:
    """Where a joining server goes: the middle of the largest gap (ties: lowest start)."""
    if not positions:
        return 0
    ps = sorted(set(positions))
    best_start, best_len = ps[0], -1
    for i, p in enumerate(ps):
        length = gap_after(p, ps[(i + 1) % len(ps)])
        if length > best_len:
            best_start, best_len = p, length
    mid = (best_start + best_len // 2) % RING_SIZE
    if mid in ps:  # ring is full to the last slot
        raise ValueError("no free position left on the ring")
    return mid


def clockwise(positions: Sequence[int], start: int) -> list[int]:
    """All positions in clockwise order, beginning just after `start` (excluded if present)."""
    ps = sorted(set(positions))
    after = [p for p in ps if p > start]
    before = [p for p in ps if p < start]
    return after + before


def successors(positions: Sequence[int], of: int, count: int) -> list[int]:
    """The next `count` positions clockwise from `of` (never `of` itself)."""
    return clockwise(positions, of)[: max(0, count)]


def covering(positions: Sequence[int], point: int) -> int:
    """The position that covers `point`: the first position at or clockwise after it."""
    ps = sorted(set(positions))
    if not ps:
        raise ValueError("empty ring")
    for p in ps:
        if p >= point:
            return p
    return ps[0]
