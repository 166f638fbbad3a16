"""The queue lengths a node reports (heartbeats, server list, metrics, the queue cap): counted from the
store at most every `max_age` seconds, and kept current in between from what the job service did.

A full count scans the queue (O(queued)), so the job service tells this class what it changed instead
(`stored`, `leased`, `changed`) and a recount happens only when the cached figures are stale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from .metrics import Metrics
from .store import Store


@dataclass(frozen=True)
class Counts:
    queued: int = 0
    leased: int = 0
    waiting: int = 0
    backup: int = 0

    @property
    def active(self) -> int:
        """Jobs in the activeQueue: waiting on dependencies, queued or leased."""
        return self.queued + self.leased + self.waiting


class QueueCounts:
    def __init__(self, store: Store, me: str, metrics: Metrics, max_age: float = 0.1) -> None:
        self.store = store
        self.me = me
        self.metrics = metrics
        self.max_age = max_age
        self._counts = _of(store.counts(me))
        self._at = 0.0

    def get(self) -> Counts:
        now = time.monotonic()
        if now - self._at > self.max_age:
            self._counts = _of(self.store.counts(self.me))
            self._at = now
            self.metrics.active.set(self._counts.active)
            self.metrics.backup.set(self._counts.backup)
        return self._counts

    def stored(self, queued: int, leased: int, waiting: int = 0) -> Counts:
        """New jobs stored here (some leased at once): counted in without a recount. Returns the new figures."""
        c = self._counts
        self._counts = replace(c, queued=c.queued + queued, leased=c.leased + leased, waiting=c.waiting + waiting)
        return self._counts

    def leased(self, n: int) -> None:
        if n:
            c = self._counts
            self._counts = replace(c, queued=max(0, c.queued - n), leased=c.leased + n)

    def changed(self) -> None:
        """Something moved that is not worth tracking by hand: count again on the next read."""
        self._at = 0.0

    def rebind(self, me: str) -> None:
        """A new incarnation counts its own rows under its new id."""
        self.me = me
        self._at = 0.0


def _of(c: dict[str, int]) -> Counts:
    return Counts(queued=c["queued"], leased=c["leased"], waiting=c["active"] - c["queued"] - c["leased"],
                  backup=c["backup"])
