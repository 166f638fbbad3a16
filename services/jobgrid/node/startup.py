"""How a node gets into a ring: the first node of a new grid, a newcomer (the seed's join: every server's
add_lock, the middle of the largest gap, announce, release), a node restarted on its data dir (back into
the live grid, or, after an outage of the whole grid, waiting for a majority of the ring it saved), and
a node removed while alive (a new incarnation joins again).

The decisions are pure (`jobgrid.recovery`: first_step, on_contact, decide, replicas_problem); this class
asks the peers and carries them out through the ring keeper.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections.abc import Sequence

from .. import recovery
from .. import ring as ringmath
from ..errors import ConfigError, GridUnavailable, ProtocolError
from ..membership import join_backoff
from ..protocol import LockRequest, LockResponse, Member, RecoveryState, RingState, UnlockRequest
from .context import NodeContext
from .counts import QueueCounts
from .peers import PeerError
from .ring_io import RingKeeper

_LOG_EVERY = 10.0  # s between two identical "waiting for a majority" log lines

Address = tuple[str, int]


class Startup:
    def __init__(self, ctx: NodeContext, keeper: RingKeeper, counts: QueueCounts) -> None:
        self.ctx = ctx
        self.keeper = keeper
        self.counts = counts
        keeper.on_removed = lambda: ctx.spawn(self.rejoin(), "rejoin")

    def _contacts(self) -> list[Address]:
        s, saved = self.ctx.s, self.keeper.saved_ring
        out: list[Address] = [s.join] if s.join else []
        if saved is not None:
            out += [(m.ip, m.port) for m in saved.members if m.id != self.ctx.id]
        return out

    async def _addresses(self, contacts: Sequence[Address]) -> list[Address]:
        """Every address behind the contacts, looked up again on each call: a join name (Swarm's
        tasks.<service>, a headless Service) names whichever members are live right now, this node excepted."""
        loop = asyncio.get_running_loop()

        async def lookup(host: str) -> tuple[str, list[str]]:
            try:
                ipaddress.ip_address(host)
                return host, [host]
            except ValueError:
                pass
            try:
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
            except OSError:  # no live member behind the name yet (or no such name): ask again next round
                return host, []
            return host, [str(i[4][0]) for i in infos]

        resolved = dict(await asyncio.gather(*(lookup(h) for h in dict.fromkeys(h for h, _ in contacts))))
        return recovery.peer_addresses(contacts, resolved, (self.ctx.s.advertised_host, self.ctx.s.port))

    async def start(self) -> None:
        """First node of a new grid, a node joining one, or a node coming back on its data dir."""
        ctx, keeper = self.ctx, self.keeper
        contacts = self._contacts()
        step = recovery.first_step(keeper.saved_ring, contacts)
        if step == "new-grid":
            saved = keeper.saved_ring
            loc = saved.members[0].location if saved is not None and saved.members else 0
            keeper.apply_ring(recovery.new_grid(saved, ctx.id, ctx.me_member(loc), ctx.s.replicas))
            self._resumed("grid_started", location=loc)
            return
        if step == "recover":
            # restarted on its data dir: a live grid takes it back; after an outage of the whole grid, it
            # waits for a majority of the ring it knew, however long that takes
            ring = await self.recover(contacts)
            if ring is None:
                return
        else:
            ring = await self._fetch_ring_any(contacts)
            if ring is None:  # a new node whose contact does not answer (yet): keep trying until join_timeout
                ctx.event("join_waiting", contacts=[f"{h}:{p}" for h, p in contacts])
                await self.join(contacts)
                return
        action = recovery.on_contact(ring, ctx.id, (ctx.s.advertised_host, ctx.s.port), keeper.saved_ring)
        if action == "resume":
            keeper.apply_ring(ring)
            self._resumed("resumed_membership", location=ctx.mem.member(ctx.id).location)  # type: ignore[union-attr]
            return
        if action == "rejoin":
            self._new_incarnation()  # we were removed while away: our old rows are orphans now
        await self.join(contacts)

    def _resumed(self, kind: str, **kw: object) -> None:
        """Back in the ring with our old rows: leases we held before the restart go back to the queue."""
        requeued = self.ctx.store.requeue_all_leased(self.ctx.id)
        self.counts.changed()
        self.ctx.joined.set()
        self.ctx.event(kind, requeued=requeued, **kw)
        self.ctx.signals.resync.set()

    def _new_incarnation(self) -> None:
        """Back under a new id: the old one's rows are orphans, whose position the grid should know."""
        ctx = self.ctx
        saved = self.keeper.saved_ring
        old = ctx.mem.member(ctx.id) or (next((m for m in saved.members if m.id == ctx.id), None) if saved else None)
        if old is not None:
            ctx.note_departed([old])
        ctx.new_incarnation()
        self.counts.rebind(ctx.id)

    # ---- after an outage --------------------------------------------------------------------------------
    async def _ask_recovery(self, contacts: Sequence[Address]) -> list[RecoveryState]:
        async def one(host: str, port: int) -> RecoveryState | None:
            try:
                return await self.ctx.peers.call(host, port, "/peer/recovery", None, RecoveryState, method="GET")
            except (PeerError, ProtocolError):
                return None
        answers = await asyncio.gather(*(one(h, p) for h, p in await self._addresses(contacts)))
        return [a for a in answers if a is not None and a.node != self.ctx.id]

    async def recover(self, contacts: Sequence[Address]) -> RingState | None:
        """Wait, with back-off, until a live grid answers (returns its ring) or a majority of the saved ring
        is back (resumes it here and returns None). Says in the log what it waits for."""
        ctx, keeper = self.ctx, self.keeper
        saved = keeper.saved_ring
        assert saved is not None
        attempt = 0
        said, said_at = "", float("-inf")
        while not ctx.stopping:
            keeper.poke.clear()
            heard = await self._ask_recovery(contacts)
            d = recovery.decide(ctx.id, saved, heard, force=ctx.s.force_new_cluster)
            if d.action == "live":
                keeper.recovering = None
                return d.ring
            if d.action in ("resume", "force"):
                self._bring_back(d)
                return None
            keeper.recovering = d
            what = f"{d.back}|{[m.id for m in d.missing]}|{d.ring.key()}"
            if what != said or time.monotonic() - said_at > _LOG_EVERY:
                said, said_at = what, time.monotonic()
                ctx.event("waiting_for_majority", epoch=d.ring.epoch, back=list(d.back),
                          need=len(d.ring.members) // 2 + 1,
                          waiting_for=[f"{m.id} at {m.ip}:{m.port}" for m in d.missing])
            try:  # back off, unless a member that came back (and heartbeats us) wakes us first
                await asyncio.wait_for(keeper.poke.wait(), join_backoff(attempt, random.random(), base=0.1, cap=2.0))
            except TimeoutError:
                attempt += 1
        return None

    def _bring_back(self, d: recovery.Decision) -> None:
        """Resume the saved ring with the members that are back (the others are removed like any failed
        node once the failure timeout passes), or, forced, a new ring of them alone."""
        keeper = self.keeper
        if d.action == "force":
            assert d.base is not None
            keeper.apply_ring(d.base)
            keeper.apply_ring(d.ring)  # the missing members are removed: their copies are promoted here and there
            self.ctx.spawn(keeper.broadcast_ring(d.ring), "broadcast")
        else:
            keeper.apply_ring(d.ring)
        keeper.recovering = None
        self._resumed("grid_forced_up" if d.action == "force" else "grid_resumed", epoch=self.ctx.mem.ring.epoch,
                      back=list(d.back), missing=[m.id for m in d.missing])

    # ---- joining ----------------------------------------------------------------------------------------
    async def _fetch_ring_any(self, contacts: Sequence[Address]) -> RingState | None:
        best: RingState | None = None
        joins = set(await self._addresses([self.ctx.s.join])) if self.ctx.s.join else set()
        for host, port in await self._addresses(contacts):
            try:
                r = await self.ctx.peers.call(host, port, "/peer/ring", None, RingState, method="GET")
            except (PeerError, ProtocolError):
                continue
            if best is None or r.key() > best.key():
                best = r
            if (host, port) in joins:  # a live member behind the join address knows the grid's ring
                break
        return best

    async def join(self, contacts: Sequence[Address]) -> None:
        """The seed's join: every server's add_lock, middle of the largest gap, announce, release."""
        ctx, keeper = self.ctx, self.keeper
        deadline = time.monotonic() + ctx.t.join_timeout
        attempt = 0
        while not ctx.stopping:
            if time.monotonic() > deadline:
                raise GridUnavailable(f"could not join the grid within {ctx.t.join_timeout:.0f} s: no server "
                                      f"answered at {', '.join(f'{h}:{p}' for h, p in contacts)}")
            ring = await self._fetch_ring_any(contacts)
            if ring is None or not ring.members:
                await asyncio.sleep(join_backoff(attempt, random.random()))
                attempt += 1
                continue
            problem = recovery.replicas_problem(ctx.s.replicas, ring)
            if problem is not None:
                raise ConfigError(problem)
            ok, locked, best = await self.lock_all(ring)
            if (ok and best is not None and {m.id for m in best.members} == {m.id for m in locked}
                    and ctx.mem.ring_problem(best) is None):
                loc = ringmath.largest_gap_midpoint([m.location for m in best.members])
                new = RingState(epoch=best.epoch + 1, members=[*best.members, ctx.me_member(loc)], proposer=ctx.id,
                                replicas=best.replicas or recovery.DEFAULT_REPLICAS)
                ctx.mem.ring = best
                keeper.apply_ring(new)
                await keeper.broadcast_ring(new)
                await self.unlock(locked)
                ctx.joined.set()
                ctx.event("joined", location=loc, epoch=new.epoch, attempts=attempt + 1)
                ctx.signals.resync.set()
                return
            await self.unlock(locked)
            attempt += 1
            ctx.event("join_backoff", attempt=attempt)
            await asyncio.sleep(join_backoff(attempt, random.random()))

    async def lock_all(self, ring: RingState) -> tuple[bool, list[Member], RingState | None]:
        req = LockRequest(holder=self.ctx.id, ttl=self.ctx.t.lock_ttl)

        async def one(m: Member) -> LockResponse | None:
            try:
                return await self.ctx.peers.call(m.ip, m.port, "/peer/lock", req, LockResponse)
            except (PeerError, ProtocolError):
                return None

        answers = await asyncio.gather(*(one(m) for m in ring.members))
        locked = [m for m, a in zip(ring.members, answers) if a is not None and a.granted]
        rings = [a.ring for a in answers if a is not None]
        best = max(rings, key=lambda r: r.key()) if rings else None
        return len(locked) == len(ring.members), locked, best

    async def unlock(self, members: Sequence[Member]) -> None:
        async def one(m: Member) -> None:
            try:
                await self.ctx.peers.call(m.ip, m.port, "/peer/unlock", UnlockRequest(holder=self.ctx.id),
                                          LockResponse)
            except (PeerError, ProtocolError):
                pass

        await asyncio.gather(*(one(m) for m in members))

    async def rejoin(self) -> None:
        """Removed while alive (paused, cut off, too slow): come back as a new incarnation."""
        contacts = [(m.ip, m.port) for m in self.ctx.mem.ring.members if m.id != self.ctx.id]
        if self.ctx.s.join:
            contacts.append(self.ctx.s.join)
        self._new_incarnation()
        while not self.ctx.stopping:
            try:
                await self.join(contacts)
                return
            except GridUnavailable as e:
                self.ctx.log.warning("rejoin_failed", error=str(e))
                await asyncio.sleep(1.0)
