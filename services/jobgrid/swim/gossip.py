"""Piggybacked dissemination with bounded retransmission (memberlist's TransmitLimitedQueue).

Each update rides on at most lambda * ceil(log10(N + 1)) outgoing messages; the least-sent go first,
newest first among equals; a newer update about the same subject (a member, a ring epoch) replaces the
older one. That bound is what keeps every member's traffic flat as N grows while an update still reaches
everyone with high probability (the SWIM paper's infection-style dissemination).
"""

from __future__ import annotations

from collections.abc import Hashable

from .messages import NodeUpdate, RingDelta, Update


def subject(u: Update) -> Hashable:
    if isinstance(u, NodeUpdate):
        return ("node", u.node)
    return ("ring", u.epoch)


class BroadcastQueue:
    """Updates waiting to be piggybacked, bucketed by how often each was sent already."""

    def __init__(self) -> None:
        self._buckets: list[dict[Hashable, Update]] = [{}]  # index: transmissions so far
        self._where: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def push(self, u: Update) -> None:
        """Queue `u` to be sent afresh; it replaces anything queued about the same subject."""
        key = subject(u)
        old = self._where.pop(key, None)
        if old is not None:
            del self._buckets[old][key]
        self._buckets[0][key] = u
        self._where[key] = 0

    def take(self, limit: int, max_items: int) -> list[Update]:
        """Up to `max_items` updates for one message; each taken counts one transmission, and one sent
        `limit` times leaves the queue."""
        out: list[Update] = []
        moved: list[tuple[Hashable, Update, int]] = []
        for tx, bucket in enumerate(self._buckets):
            if len(out) >= max_items:
                break
            if not bucket:
                continue
            for key in reversed(list(bucket)):  # newest first
                if len(out) >= max_items:
                    break
                u = bucket.pop(key)
                del self._where[key]
                out.append(u)
                moved.append((key, u, tx + 1))
        for key, u, tx in moved:
            if tx >= limit:
                continue
            while len(self._buckets) <= tx:
                self._buckets.append({})
            self._buckets[tx][key] = u
            self._where[key] = tx
        return out

    def pending(self) -> list[Update]:
        return [u for b in self._buckets for u in b.values()]


def ring_deltas(updates: list[Update]) -> list[RingDelta]:
    return [u for u in updates if isinstance(u, RingDelta)]
