"""A node restarted on its data dir after an outage: find the others from the saved ring, wait for a
majority of it (or a live grid), then resume. A mixin of `Grid`; the decisions are `jobgrid.recovery`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

from .. import recovery
from ..errors import ProtocolError
from ..membership import join_backoff
from ..protocol import RecoveryState, RingState
from .peers import PeerError

_LOG_EVERY = 10.0  # s between two identical "waiting for a majority" log lines


class Restart:
    recovering: recovery.Decision | None = None  # set while this node waits for a majority of its saved ring
    _poke: asyncio.Event | None = None  # set when a peer shows signs of life: ask everyone again at once

    def poke_recovery(self, sender: str) -> None:
        """A heartbeat or ring from `sender` while we wait: a grid may be live again, ask now."""
        if self._poke is not None and self.recovering is not None:
            self._poke.set()

    def recovery_state(self) -> RecoveryState:
        """GET /peer/recovery: whether this node runs in a grid, and the ring it had saved."""
        live = self.joined.is_set() and self.mem.is_member
        return RecoveryState(node=self.id, live=live, ring=self.mem.ring, saved=self.saved_ring)

    def not_serving_reason(self) -> str | None:
        """Why this node takes no work now (None: it does), for /healthz, /servers, the CLI and the dashboard."""
        if self.stopping:
            return "node is stopping"
        if self.recovering is not None:
            return recovery.describe(self.recovering)
        if not self.joined.is_set():
            return "node is joining the grid"
        if not self.mem.is_member:
            return "node is not a member of the ring (it was removed and is rejoining)"
        if not self.mem.has_quorum(time.monotonic()):
            return "node cannot reach a majority of the ring (partitioned?); try another node"
        return None

    async def _ask_recovery(self, contacts: Sequence[tuple[str, int]]) -> list[RecoveryState]:
        async def one(host: str, port: int) -> RecoveryState | None:
            try:
                return await self.peers.call(host, port, "/peer/recovery", None, RecoveryState, method="GET",
                                             timeout=min(2.0, self.t.failure_timeout))
            except (PeerError, ProtocolError):
                return None
        answers = await asyncio.gather(*(one(h, p) for h, p in dict.fromkeys(contacts)))
        return [a for a in answers if a is not None and a.node != self.id]

    async def recover(self, contacts: Sequence[tuple[str, int]]) -> RingState | None:
        """Wait, with back-off, until a live grid answers (returns its ring) or a majority of the saved ring
        is back (resumes it here and returns None). Says in the log what it waits for."""
        assert self.saved_ring is not None
        attempt = 0
        said, said_at = "", float("-inf")
        self._poke = asyncio.Event()
        while not self.stopping:
            self._poke.clear()
            heard = await self._ask_recovery(contacts)
            d = recovery.decide(self.id, self.saved_ring, heard, force=self.s.force_new_cluster)
            if d.action == "live":
                self.recovering = None
                return d.ring
            if d.action in ("resume", "force"):
                self._bring_back(d)
                return None
            self.recovering = d
            what = f"{d.back}|{[m.id for m in d.missing]}|{d.ring.key()}"
            if what != said or time.monotonic() - said_at > _LOG_EVERY:
                said, said_at = what, time.monotonic()
                self.event("waiting_for_majority", epoch=d.ring.epoch, back=list(d.back),
                           need=len(d.ring.members) // 2 + 1,
                           waiting_for=[f"{m.id} at {m.ip}:{m.port}" for m in d.missing])
            try:  # back off, unless a member that came back (and heartbeats us) wakes us first
                await asyncio.wait_for(self._poke.wait(), join_backoff(attempt, random.random(), base=0.1, cap=2.0))
            except TimeoutError:
                attempt += 1
        return None

    def _bring_back(self, d: recovery.Decision) -> None:
        """Resume the saved ring with the members that are back (the others are removed like any failed
        node once the failure timeout passes), or, forced, a new ring of them alone."""
        if d.action == "force":
            assert d.base is not None
            self.apply_ring(d.base)
            self.apply_ring(d.ring)  # the missing members are removed: their copies are promoted here and there
            self.spawn(self.broadcast_ring(d.ring), "broadcast")
        else:
            self.apply_ring(d.ring)
        requeued = self.store.requeue_all_leased(self.id)
        self.recovering = None
        self.joined.set()
        self.event("grid_forced_up" if d.action == "force" else "grid_resumed", epoch=self.mem.ring.epoch,
                   back=list(d.back), missing=[m.id for m in d.missing], requeued=requeued)
        self._resync_needed.set()
