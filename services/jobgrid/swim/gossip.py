"""Piggybacked dissemination with bounded retransmission (memberlist's TransmitLimitedQueue).

Each update rides on at most lambda * ceil(log10(N + 1)) outgoing messages; the least-sent go first,
newest first among equals; a newer update about the same subject (a member, a ring epoch) replaces the
older one. That bound is what keeps every member's traffic flat as N grows while an update still reaches
everyone with high probability (the SWIM paper's infection-style dissemination).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable

from .messages import NodeUpdate, RingDelta, Update


def subject(u: Update) -> Hashable:
    if isinstance(u, NodeUpdate):
        return ("node", u.node)
    return ("ring", u.epoch)


class BroadcastQueue:
    """Updates waiting to be piggybacked, bucketed by how often each was sent already."""

    def __init__(self) -> None:
        self._buckets: list[list[int]] = [[]]  # index: transmissions so far; each: submission numbers, sorted
        self._items: dict[int, tuple[Hashable, Update]] = {}
        self._where: dict[Hashable, tuple[int, int]] = {}  # subject -> (submission number, transmissions)
        self._seq = 0

    def __len__(self) -> int:
        return len(self._where)

    def push(self, u: Update) -> None:
        """Queue `u` to be sent afresh; it replaces anything queued about the same subject."""
        key = subject(u)
        old = self._where.pop(key, None)
        if old is not None:
            seq, tx = old
            bucket = self._buckets[tx]
            del bucket[bisect.bisect_left(bucket, seq)]
            del self._items[seq]
        self._seq += 1
        self._buckets[0].append(self._seq)
        self._items[self._seq] = (key, u)
        self._where[key] = (self._seq, 0)

    def take(self, limit: int, max_items: int) -> list[Update]:
        """Up to `max_items` updates for one message; each taken counts one transmission, and one sent
        `limit` times leaves the queue."""
        out: list[Update] = []
        moved: list[tuple[int, int]] = []
        for tx, bucket in enumerate(self._buckets):
            while bucket and len(out) < max_items:
                seq = bucket.pop()  # the newest
                out.append(self._items[seq][1])
                moved.append((seq, tx + 1))
            if len(out) >= max_items:
                break
        for seq, tx in moved:
            key, _ = self._items[seq]
            if tx >= limit:
                del self._items[seq], self._where[key]
                continue
            while len(self._buckets) <= tx:
                self._buckets.append([])
            bisect.insort(self._buckets[tx], seq)
            self._where[key] = (seq, tx)
        return out

    def pending(self) -> list[Update]:
        return [self._items[seq][1] for b in self._buckets for seq in b]


def ring_deltas(updates: list[Update]) -> list[RingDelta]:
    return [u for u in updates if isinstance(u, RingDelta)]
