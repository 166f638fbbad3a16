"""A graceful leave, carried out: the pure `jobgrid.leave` says what comes next; this class does it
(drain the runner, hand leases back, hand our copies over, ask a member to drop us from the ring, hand
rows off when nobody holds copies) and answers the other side, a member asked to let a node go.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Protocol

from .. import leave as lv
from ..errors import ProtocolError, Unavailable
from ..membership import join_backoff
from ..protocol import LeaveRequest, Member, RingState
from .context import NodeContext
from .peers import PeerError
from .replication import Replication
from .ring_io import RingKeeper


class Draining(Protocol):
    """What a leave needs of this node's runner."""

    def drain(self) -> int: ...
    def busy(self) -> int: ...
    def hand_back(self) -> int: ...


class Locking(Protocol):
    """Every member's add_lock, as a join takes them (node/startup.py)."""

    async def lock_all(self, ring: RingState) -> tuple[bool, list[Member], RingState | None]: ...
    async def unlock(self, members: Sequence[Member]) -> None: ...


class Leaving:
    def __init__(self, ctx: NodeContext, keeper: RingKeeper, replication: Replication, locks: Locking) -> None:
        self.ctx = ctx
        self.keeper = keeper
        self.replication = replication
        self.locks = locks
        self.attempts = 0
        self.runner: Draining | None = None  # set by the node when it runs jobs
        self.task: asyncio.Task | None = None
        self.handed_over: int | None = None  # the ring epoch our copies were last handed over for
        self.me: Member | None = None        # our place in the ring, kept for the handoff after we left it

    # ---- this node leaves ------------------------------------------------------------------------------------
    def begin(self) -> asyncio.Task:
        """Start the leave (once; later calls return the same task, whose result is the exit code)."""
        if self.task is None:
            self.task = asyncio.ensure_future(self.run())
        return self.task

    async def run(self) -> int:
        ctx = self.ctx
        t = ctx.t
        plan = lv.Leave(lv.LeavePolicy.of(t.leave_grace, t.leave_timeout), time.monotonic())
        self.me = ctx.mem.member(ctx.id)
        ctx.leaving = True
        ctx.event("leave_started", timeout=plan.policy.timeout, grace=plan.policy.grace,
                  ring_size=len(ctx.mem.ring.members))
        if self.runner is not None:
            self.runner.drain()
        while True:
            now = time.monotonic()
            step = plan.next(now, self._view())
            if isinstance(step, lv.Exit):
                if step.code == lv.EXIT_LEFT and not ctx.mem.is_member:
                    ctx.identity.next_incarnation()  # a restart on this data dir joins as a newcomer
                log = ctx.log.info if step.code == lv.EXIT_LEFT else ctx.log.warning
                log("leave_finished", code=step.code, reason=step.reason, took=round(now - plan.started, 3))
                return step.code
            try:
                await asyncio.wait_for(self._do(step), timeout=max(0.01, plan.deadline - now))
            except TimeoutError:
                continue  # the plan says the leave timed out

    def _view(self) -> lv.LeaveView:
        ctx, mem = self.ctx, self.ctx.mem
        in_ring = mem.is_member
        rows_left = (not in_ring and bool(ctx.store.jobs_of(ctx.id, limit=1) or ctx.store.results_of(ctx.id, limit=1)))
        return lv.LeaveView(running=self.runner.busy() if self.runner is not None else 0,
                            members=len(mem.ring.members), in_ring=in_ring,
                            handed_over=self.handed_over == mem.ring.epoch,
                            replicas=mem.replicas, rows_left=rows_left)

    async def _do(self, step: lv.Step) -> None:
        ctx = self.ctx
        if isinstance(step, lv.WaitRuns):
            await asyncio.sleep(0.05)
        elif isinstance(step, lv.HandBackLeases):
            assert self.runner is not None
            n = self.runner.hand_back()
            ctx.event("leave_leases_handed_back", jobs=n)
        elif isinstance(step, lv.HandOver):
            if self.runner is not None:
                self.runner.drain()
            epoch = ctx.mem.ring.epoch
            await self.replication.hand_over()
            self.handed_over = epoch
            ctx.event("leave_handed_over")
        elif isinstance(step, lv.Announce):
            await self._announce()
        elif isinstance(step, lv.HandOff):
            await self._hand_off()

    async def _announce(self) -> None:
        """With every member's add_lock, ask the members, our successor first, to propose the ring without us;
        adopt the answer. Refused locks (a join, another departure): release, back off, and come again."""
        ctx = self.ctx
        ring = ctx.mem.ring
        ok, locked, best = await self.locks.lock_all(ring)
        try:
            if best is not None and best.key() > ring.key():
                self.keeper.apply_ring(best)  # a ring change went through meanwhile: hand over again, then ask
                return
            if self.handed_over != ring.epoch:
                return  # the ring changed while we took the locks
            for m in lv.ask_order(ring, ctx.id) if ok else ():
                try:
                    new = await ctx.peers.call(m.ip, m.port, "/peer/leave",
                                               LeaveRequest(sender=ctx.id, epoch=ring.epoch), RingState)
                except (PeerError, ProtocolError) as e:
                    ctx.log.info("leave_not_taken", by=m.id, error=str(e)[:200])
                    continue
                self.keeper.apply_ring(new)  # type: ignore[arg-type]
                if not ctx.mem.is_member:
                    ctx.event("left_ring", epoch=ctx.mem.ring.epoch, by=m.id)
                    return
        finally:
            await self.locks.unlock(locked)
        self.attempts += 1
        await asyncio.sleep(join_backoff(self.attempts, random.random()))

    async def _hand_off(self) -> None:
        """R = 1: nobody holds copies of ours; send our rows to the member now covering our position."""
        assert self.me is not None
        promoter = self.ctx.mem.promoter_for(self.me.location)
        if promoter is None:
            await asyncio.sleep(0.2)
            return
        await self.replication.handoff(self.me, promoter)

    # ---- a member asked to let a node go ------------------------------------------------------------------------
    async def on_leave(self, req: LeaveRequest) -> RingState:
        ctx, mem = self.ctx, self.ctx.mem
        now = time.monotonic()
        leaver = mem.member(req.sender)
        new = lv.departure_ring(mem, req.sender, now, self.keeper.add_lock.current(now), req.epoch)
        if isinstance(new, str):
            raise Unavailable(f"departure of {req.sender} not taken now: {new}", retry_after=0.2)
        if new is None or leaver is None:
            return mem.ring  # it is gone already
        self.keeper.apply_ring(new)
        ctx.event("member_left", left=req.sender, epoch=new.epoch)
        ctx.spawn(self.keeper.broadcast_ring(new, extra=[leaver]), "broadcast")
        return new
