"""Clients waiting for results: long polls and lingering acks, woken when a result is recorded here (or
a copy of one arrives). Only results whose copies are all written are handed out (`Store`'s `copied`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence

from ..protocol import Result
from .search import Search
from .store import Store


class Waiters:
    def __init__(self, store: Store, search: Search) -> None:
        self.store = store
        self.search = search
        self._waiting: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, ids: Sequence[str]) -> None:
        for i in ids:
            for ev in self._waiting.pop(i, ()):
                ev.set()

    def settled(self, ids: list[str]) -> dict[str, Result]:
        """The results of `ids` held here that may be handed out (copied, owned by a member)."""
        return self.store.servable_results(ids, self.search.ctx.mem.member_ids)

    @contextlib.contextmanager
    def watching(self, ids: list[str]) -> Iterator[asyncio.Event]:
        """An event set when a result for any of `ids` is recorded here (or copied here)."""
        ev = asyncio.Event()
        for i in ids:
            self._waiting[i].add(ev)
        try:
            yield ev
        finally:
            for i in ids:
                w = self._waiting.get(i)
                if w is not None:
                    w.discard(ev)
                    if not w:
                        self._waiting.pop(i, None)

    async def within(self, ids: list[str], seconds: float) -> list[Result]:
        """The settled results of `ids` (jobs this node just accepted) once all are in, or after `seconds`."""
        end = time.monotonic() + seconds
        with self.watching(ids) as ev:
            while True:
                have = self.settled(ids)
                left = end - time.monotonic()
                if len(have) == len(ids) or left <= 0:
                    return list(have.values())
                ev.clear()
                try:
                    await asyncio.wait_for(ev.wait(), timeout=left)
                except TimeoutError:
                    pass

    async def wait(self, ids: list[str], timeout: float) -> tuple[list[Result], list[str], list[str]]:
        """(results, unknown, undetermined) for `ids`, as soon as one result is known or an id is known not
        to exist, else at the timeout. A job this node holds any copy of is pending; one it does not hold
        is looked up on the ring: *unknown* only when the grid is settled and no member holds it, else
        *undetermined* ("don't know yet": some node that might hold it did not answer), which is waited
        out here and reported only when the timeout comes."""
        end = time.monotonic() + timeout
        looked_at = float("-inf")
        undetermined: list[str] = []
        while True:
            have = self.settled(ids)
            if have:
                return list(have.values()), [], []
            here = self.store.held_ids(ids, self.search.ctx.mem.member_ids)  # orphan copies: ask the ring
            missing = [i for i in ids if i not in here]
            now = time.monotonic()
            if missing and now - looked_at >= 0.5:
                looked_at = now
                v = await self.search.find(missing, {})
                rs = [r for r in v.found.values() if isinstance(r, Result)]
                if rs or v.absent:
                    return rs, list(v.absent), []
                undetermined = list(v.undetermined)
            elif not missing:
                undetermined = []
            left = end - time.monotonic()
            if left <= 0:
                return [], [], undetermined
            with self.watching(ids) as ev:
                try:  # ids held elsewhere are asked about again (their results are not copied here)
                    await asyncio.wait_for(ev.wait(), timeout=min(left, 0.5 if missing else left))
                    if len(ids) > 1:  # let results of a batch gather: one reply (and one query) for many
                        await asyncio.sleep(0.005 if len(ids) <= 64 else 0.02)
                except TimeoutError:
                    pass

    def wake_all(self) -> None:
        for evs in self._waiting.values():
            for ev in evs:
                ev.set()
