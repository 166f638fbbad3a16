"""The membership shell: the ring this node follows, heartbeats and failure detection, ring
announcements and the add_lock, and whether the node may serve.

Decisions are the pure `Membership` (adopt -> RingChange, propose_removals, ring_problem, push_problem);
this class persists and announces the rings it adopts and hands each `RingChange` to its listeners
(the job service lapses leases and promotes copies, replication hands off and resyncs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import msgspec

from .. import recovery
from ..errors import ProtocolError, Unavailable
from ..membership import AddLock, RingChange
from ..protocol import (
    Heartbeat, HeartbeatReply, JoinAnnounce, LockRequest, LockResponse, Member, RecoveryState, RingState,
    ServerEntry, ServerList, UnlockRequest,
)
from .context import NodeContext
from .counts import QueueCounts
from .peers import PeerError

_ring_enc = msgspec.msgpack.Encoder()
_ring_dec = msgspec.msgpack.Decoder(RingState)

RingListener = Callable[[RingChange, RingState], None]


class RingKeeper:
    def __init__(self, ctx: NodeContext, counts: QueueCounts) -> None:
        self.ctx = ctx
        self.counts = counts
        self.mem = ctx.mem
        self.add_lock = AddLock()
        saved = ctx.store.get_meta("ring")
        self.saved_ring: RingState | None = _ring_dec.decode(saved) if saved else None
        self.recovering: recovery.Decision | None = None  # waiting for a majority of the saved ring
        self.poke = asyncio.Event()  # a member showed signs of life while we wait: ask again at once
        self.listeners: list[RingListener] = []
        self.on_removed: Callable[[], None] | None = None  # we were removed while alive: rejoin (startup.py)
        self._beats: dict[str, asyncio.Task] = {}

    # ---- may this node serve? -------------------------------------------------------------------------
    def can_serve(self) -> bool:
        return (not self.ctx.stopping and self.recovering is None and self.mem.is_member
                and self.mem.has_quorum(time.monotonic()))

    def takes_work(self) -> bool:
        """Serving and not leaving: takes submissions, and leases its jobs to runners (its own or thieves)."""
        return not self.ctx.leaving and self.can_serve()

    def require_accepting(self) -> None:
        """For new work (submissions): refused once a graceful leave began, so the client tries another node."""
        if self.ctx.leaving:
            raise Unavailable("node is leaving the grid; submit to another node", retry_after=0.2)
        self.require_serving()

    def not_serving_reason(self) -> str | None:
        """Why this node takes no work now (None: it does), for /healthz, /servers, the CLI and the dashboard."""
        if self.ctx.stopping:
            return "node is stopping"
        if self.ctx.leaving:
            return "node is leaving the grid"
        if self.recovering is not None:
            return recovery.describe(self.recovering)
        if not self.ctx.joined.is_set():
            return "node is joining the grid"
        if not self.mem.is_member:
            return "node is not a member of the ring (it was removed and is rejoining)"
        if not self.mem.has_quorum(time.monotonic()):
            return "node cannot reach a majority of the ring (partitioned?); try another node"
        return None

    def require_serving(self) -> None:
        if self.ctx.stopping:
            raise Unavailable("node is stopping")
        if self.recovering is not None:
            raise Unavailable(recovery.describe(self.recovering), retry_after=2.0)
        if not self.mem.is_member:
            raise Unavailable("node is not (yet) a member of the ring")
        if not self.mem.has_quorum(time.monotonic()):
            raise Unavailable("node cannot reach a majority of the ring (partitioned?); try another node")

    # ---- views ------------------------------------------------------------------------------------------
    def server_list(self) -> ServerList:
        me = self.ctx.id
        waiting = self.recovering
        if waiting is not None:  # restarting after an outage: the ring it waits for, who is back and who not
            out = [ServerEntry(id=m.id, location=m.location, ip=m.ip, port=m.port,
                               status="alive" if m.id in waiting.back else "dead") for m in waiting.ring.members]
            return ServerList(epoch=waiting.ring.epoch, me=me, servers=out, serving=False,
                              reason=recovery.describe(waiting), replicas=waiting.ring.replicas)
        now, wall = time.monotonic(), time.time()
        c = self.counts.get()
        out = []
        for m in self.mem.members:
            if m.id == me:
                out.append(ServerEntry(id=m.id, location=m.location, ip=m.ip, port=m.port, active=c.queued,
                                       backup=c.backup, timestamp=wall, status="alive"))
                continue
            heard = max(self.mem.heard.get(m.id, 0.0), self.mem.contact.get(m.id, 0.0))
            out.append(ServerEntry(id=m.id, location=m.location, ip=m.ip, port=m.port,
                                   active=self.mem.active.get(m.id, 0), backup=self.mem.backup.get(m.id, 0),
                                   timestamp=wall - (now - heard) if heard else 0.0,
                                   status=self.mem.status(m.id, now)))  # type: ignore[arg-type]
        reason = self.not_serving_reason()
        return ServerList(epoch=self.mem.ring.epoch, me=me, servers=out, serving=reason is None,
                          reason=reason or "", replicas=self.mem.replicas)

    def recovery_state(self) -> RecoveryState:
        """GET /peer/recovery: whether this node runs in a grid, and the ring it had saved."""
        live = self.ctx.joined.is_set() and self.mem.is_member
        return RecoveryState(node=self.ctx.id, live=live, ring=self.mem.ring, saved=self.saved_ring)

    # ---- adopting rings ---------------------------------------------------------------------------------
    def apply_ring(self, new: RingState) -> RingChange | None:
        """Adopt `new` if it is newer and keeps the ring's invariants; persist it, then let the listeners
        carry out what the change means for this node."""
        ctx = self.ctx
        if new.key() > self.mem.ring.key():
            problem = self.mem.ring_problem(new, (ctx.s.advertised_host, ctx.s.port))
            if problem is not None:  # never adopted, never persisted: a ring we could not restart from
                ctx.log.warning("ring_refused", epoch=new.epoch, proposer=new.proposer, reason=problem)
                return None
        change = self.mem.adopt(new, time.monotonic())
        if change is None:
            return None
        ctx.store.set_meta("ring", _ring_enc.encode(new))
        ctx.metrics.ring_size.set(len(new.members))
        ctx.metrics.epoch.set(new.epoch)
        ctx.event("ring_changed", epoch=new.epoch, members=len(new.members),
                  added=[m.id for m in change.added], removed=[m.id for m in change.removed])
        if change.removed:
            ctx.note_departed(list(change.removed))
        if not change.i_am_member:
            if ctx.joined.is_set() and not ctx.stopping and not ctx.leaving:
                ctx.event("removed_from_ring", epoch=new.epoch)
                ctx.joined.clear()
                if self.on_removed is not None:
                    self.on_removed()
            return change
        for listener in self.listeners:
            listener(change, new)
        ctx.signals.wake_runner.set()
        return change

    async def broadcast_ring(self, ring: RingState, extra: Sequence[Member] = ()) -> None:
        targets = {m.id: m for m in [*ring.members, *extra] if m.id != self.ctx.id}
        await asyncio.gather(*(self.send_ring(m, ring) for m in targets.values()))

    async def send_ring(self, m: Member, ring: RingState) -> None:
        try:
            await self.ctx.peers.call(m.ip, m.port, "/peer/ring", JoinAnnounce(ring=ring, sender=self.ctx.id),
                                      RingState)
        except (PeerError, ProtocolError):
            pass

    def on_ring(self, ann: JoinAnnounce) -> RingState:
        """A ring announced by a joiner or the leader: adopt it if it is newer and its sender may propose it."""
        if ann.ring.key() > self.mem.ring.key():
            why = self.mem.ring_problem(ann.ring, (self.ctx.s.advertised_host, self.ctx.s.port))
            if why is not None:
                raise ProtocolError(f"ring refused: {why}", 422)
            if ann.sender == self.ctx.id:
                raise ProtocolError("ring refused: announced in this node's own name", 403)
            why = self.mem.push_problem(ann.ring, ann.sender, self.add_lock.current(time.monotonic()))
            if why is not None:
                raise ProtocolError(f"ring refused: {why}", 409)
            self.apply_ring(ann.ring)
        return self.mem.ring

    def on_lock(self, req: LockRequest) -> LockResponse:
        granted = self.add_lock.acquire(req.holder, time.monotonic(), req.ttl)
        return LockResponse(granted=granted, holder=self.add_lock.current(time.monotonic()), ring=self.mem.ring)

    def on_unlock(self, req: UnlockRequest) -> LockResponse:
        self.add_lock.release(req.holder)
        return LockResponse(granted=False, holder=self.add_lock.current(time.monotonic()), ring=self.mem.ring)

    # ---- heartbeats and failure detection -----------------------------------------------------------------
    async def heartbeat_loop(self) -> None:
        ctx = self.ctx
        while not ctx.stopping:
            start = time.monotonic()
            if ctx.joined.is_set():
                # one beat in flight per peer; a silent peer (paused, cut off) must not hold up the others'
                # replies, or their contact ages past the fence window and a healthy majority loses quorum
                beats = []
                for m in self.mem.peers():
                    t = self._beats.get(m.id)
                    if t is None or t.done():
                        t = self._beats[m.id] = ctx.spawn(self._beat(m), f"beat-{m.id}")
                    beats.append(t)
                if beats:
                    await asyncio.wait(beats, timeout=ctx.t.heartbeat_interval)
                self._beats = {k: v for k, v in self._beats.items() if not v.done()}
                proposal = self.mem.propose_removals(time.monotonic())
                if proposal is not None:
                    dead = [m for m in self.mem.ring.members if m not in proposal.members]
                    ctx.event("declared_dead", dead=[m.id for m in dead], epoch=proposal.epoch)
                    self.apply_ring(proposal)
                    ctx.spawn(self.broadcast_ring(proposal, extra=dead), "broadcast")
            try:
                await asyncio.wait_for(ctx.signals.beat_now.wait(),
                                       timeout=max(0.0, ctx.t.heartbeat_interval - (time.monotonic() - start)))
            except TimeoutError:
                pass
            ctx.signals.beat_now.clear()

    async def _beat(self, m: Member) -> None:
        c = self.counts.get()
        sent = time.monotonic()
        hb = Heartbeat(sender=self.ctx.id, epoch=self.mem.ring.epoch, active=c.queued, backup=c.backup,
                       sent_at=time.time())
        try:
            reply = await self.ctx.peers.call(m.ip, m.port, "/peer/heartbeat", hb, HeartbeatReply)
        except (PeerError, ProtocolError):
            return
        self.ctx.metrics.heartbeat_rtt.observe(time.monotonic() - sent)
        if reply.ring is not None and reply.ring.key() > self.mem.ring.key():
            self.apply_ring(reply.ring)
        if reply.member and reply.epoch == self.mem.ring.epoch:
            self.mem.on_reply(m.id, sent, reply.active)
        elif reply.epoch < self.mem.ring.epoch:
            self.ctx.spawn(self.send_ring(m, self.mem.ring), "push-ring")

    def on_heartbeat(self, hb: Heartbeat) -> HeartbeatReply:
        if self.recovering is not None:
            self.poke.set()  # a member is back: ask everyone again at once
        member = self.mem.member(hb.sender) is not None
        if member:
            if hb.active and not self.mem.active.get(hb.sender):
                self.ctx.signals.wake_runner.set()  # the sender has queued jobs again: our idle runner may steal
            self.mem.on_heartbeat(hb.sender, time.monotonic(), hb.active, hb.backup)
        ring = self.mem.ring if (not member or hb.epoch < self.mem.ring.epoch) else None
        return HeartbeatReply(epoch=self.mem.ring.epoch, active=self.counts.get().queued, member=member, ring=ring)
