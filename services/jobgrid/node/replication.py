"""Copies: every job and result of this owner on its R-1 successors. Replicate before an ack, accept
copies from the owners this node succeeds, bring copies back to R after a ring change (resync, prune),
and hand a departed owner's copies to the node that now covers it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import msgspec

from ..errors import GridUnavailable, ProtocolError, Unavailable
from ..membership import RingChange
from ..protocol import HandoffRequest, Member, ReplicateRequest, ReportResponse, RingState
from .context import NodeContext
from .peers import PeerError, PeerFenced
from .ring_io import RingKeeper

_OK = ReportResponse(recorded=[], duplicates=[], unknown=[])


class Owning(Protocol):
    """What replication needs of the job service: take a departed owner's rows as this node's own."""

    def adopt(self, old: str, ids: Sequence[str] | None, *, via: str | None = None) -> int: ...

    async def adopt_unowned(self, old: str, ids: Sequence[str], *,
                            via: str | None = None) -> tuple[int, list[str]]: ...

    def copies_arrived(self, result_ids: Sequence[str]) -> None: ...


class Replication:
    def __init__(self, ctx: NodeContext, keeper: RingKeeper) -> None:
        self.ctx = ctx
        self.keeper = keeper
        self.mem = ctx.mem
        self.store = ctx.store
        self.owning: Owning | None = None  # the job service, bound once it exists
        self.reconcile: Callable[[], Awaitable[None]] | None = None  # orphan reconciliation, after each resync
        # successors known to hold every job and result of ours (a resync sends all only to the others)
        self.synced: set[str] = set()
        keeper.listeners.append(self._ring_changed)

    def _ring_changed(self, change: RingChange, ring: RingState) -> None:
        for dead, promoter in change.handoff:
            self.ctx.spawn(self.handoff(dead, promoter), f"handoff-{dead.id}")
        if change.successors_changed or change.promote or change.removed:
            self.ctx.signals.resync.set()

    # ---- sending copies ----------------------------------------------------------------------------------
    async def replicate(self, make: ReplicateRequest, deadline: float | None = None,
                        only: set[str] | None = None) -> None:
        """Send `make` to every current successor; retry (following ring changes) until all have it.

        A successor that stops answering (killed, frozen, cut off) is not waited for past the ring change
        that removes it: its copy is then due on the new successor instead, so a fault delays submissions
        by about the failure timeout, not by the peer call's own timeout. `only`: just these successors
        (a resync to the ones that lack our copies). A successor this gives up on is resynced in full."""
        ctx = self.ctx
        done: set[str] = set()
        end = time.monotonic() + (deadline if deadline is not None else 2 * ctx.t.failure_timeout + 2)
        sending: dict[str, asyncio.Task] = {}
        retry_at: dict[str, float] = {}
        try:
            while True:
                targets = {m.id: m for m in self.mem.successors(ctx.id)
                           if m.id not in done and (only is None or m.id in only)}
                if not targets:
                    return
                for mid in [k for k in sending if k not in targets]:  # no longer a successor: not needed
                    sending.pop(mid).cancel()
                now = time.monotonic()
                for mid, m in targets.items():
                    if mid not in sending and retry_at.get(mid, 0.0) <= now:
                        sending[mid] = asyncio.ensure_future(self.send(m, make))
                if now > end or ctx.stopping:
                    self.synced.difference_update(targets)  # may lack this copy: a full resync repairs it
                    ctx.signals.resync.set()
                    raise Unavailable("could not copy the jobs to enough replicas in time; outcome unknown")
                if sending:  # wake on an answer, or soon enough to see a ring change
                    finished, _ = await asyncio.wait(sending.values(), timeout=0.1,
                                                     return_when=asyncio.FIRST_COMPLETED)
                else:
                    finished = set()
                    await asyncio.sleep(0.05)
                for mid, t in list(sending.items()):
                    if t in finished:
                        del sending[mid]
                        if t.result():
                            done.add(mid)
                        else:
                            retry_at[mid] = time.monotonic() + 0.05
        finally:
            for t in sending.values():
                t.cancel()

    async def send(self, m: Member, req: ReplicateRequest) -> bool:
        """One copy to one member; a fenced answer carries that member's newer ring, which we adopt."""
        req = msgspec.structs.replace(req, epoch=self.mem.ring.epoch)
        try:
            await self.ctx.peers.call(m.ip, m.port, "/peer/replicate", req, ReportResponse)
            return True
        except PeerFenced as e:
            if e.ring is not None:
                self.keeper.apply_ring(e.ring)
            return False
        except (PeerError, ProtocolError):
            return False

    # ---- receiving copies ------------------------------------------------------------------------------
    def on_replicate(self, req: ReplicateRequest) -> ReportResponse:
        ctx, mem = self.ctx, self.mem
        if req.sender == ctx.id:
            raise ProtocolError("replicas in this node's own name refused: a node never replicates to itself", 403)
        stray = next((j for j in req.jobs if j.owner != req.sender), None)
        if stray is not None:
            raise ProtocolError(f"node {req.sender} sent a replica of job {stray.spec.id}, owned by {stray.owner}", 403)
        sender = mem.member(req.sender)
        if sender is None and req.sender not in ctx.departed and req.epoch <= mem.ring.epoch:
            raise ProtocolError(f"sender {req.sender} is not a member of ring epoch {mem.ring.epoch}", 409)
        if req.prune_all:
            # only a member may prune its copies, and only with our ring (not an older one) agreeing that we are
            # not its successor: a departed owner's rows are promoted or handed off, never dropped on its word
            if (sender is None or req.epoch < mem.ring.epoch
                    or any(m.id == ctx.id for m in mem.successors(req.sender))):
                ctx.event("prune_refused", owner=req.sender, epoch=req.epoch)
                return _OK
            n = self.store.drop_owner(req.sender)
            ctx.event("replicas_pruned", owner=req.sender, jobs=n)
            return _OK
        if (sender is not None and req.epoch <= mem.ring.epoch
                and all(m.id != ctx.id for m in mem.successors(req.sender))):
            # the ring makes this node responsible for none of the sender's copies (the answer carries our ring)
            raise ProtocolError(f"this node is not a successor of {req.sender} in ring epoch {mem.ring.epoch}", 409)
        if req.jobs:
            self.store.upsert_replicas(req.jobs)
        if req.leases:
            self.store.note_leases(req.sender, [(n.id, n.holder, n.until) for n in req.leases])
        if req.results or req.drop:
            self.store.put_result_replicas(req.sender, req.results, req.drop, me=ctx.id)
            if req.results and self.owning is not None:
                self.owning.copies_arrived([r.job_id for r in req.results])
        return _OK

    # ---- back to R copies after a ring change ---------------------------------------------------------------
    async def resync_loop(self) -> None:
        ctx = self.ctx
        while not ctx.stopping:
            await ctx.signals.resync.wait()
            ctx.signals.resync.clear()
            if not ctx.joined.is_set():
                continue
            await asyncio.sleep(0.05)  # let a burst of ring changes settle
            try:
                await self._resync()
                if self.reconcile is not None:
                    await self.reconcile()
            except (GridUnavailable, ProtocolError) as e:
                ctx.log.warning("resync_incomplete", error=str(e))
                await asyncio.sleep(0.5)
                ctx.signals.resync.set()

    async def _resync(self) -> None:
        """Every job and result of ours to the successors that may lack them (new ones, or ones a copy
        failed to reach), in batches; then prune our copies from nodes that are no longer successors."""
        ctx = self.ctx
        epoch = self.mem.ring.epoch
        succ = {m.id for m in self.mem.successors(ctx.id)}
        self.synced &= succ
        need = succ - self.synced
        if need:
            for batch in self._batches(self.store.jobs_of, lambda j: j.spec.id):
                await self.replicate(ReplicateRequest(sender=ctx.id, epoch=0, jobs=batch), only=need)
            for batch in self._batches(self.store.results_of, lambda r: r.job_id):
                await self.replicate(ReplicateRequest(sender=ctx.id, epoch=0, results=batch), only=need)
        # results whose first copying had failed: the others hold them now too (or get them just above)
        pending = self.store.uncopied_of(ctx.id)
        if pending:
            await self.replicate(ReplicateRequest(sender=ctx.id, epoch=0, results=list(pending.values())))
            self.store.mark_copied(list(pending))
            if self.owning is not None:
                self.owning.copies_arrived(list(pending))
        self.synced |= need
        # prune only with the ring the copies above were made for: a prune computed from an older ring would
        # wipe the copies on successors gained meanwhile (the ring change sets the resync signal: we run again)
        if self.mem.ring.epoch != epoch or not self.mem.is_member or ctx.signals.resync.is_set():
            return
        keep = succ | {ctx.id}
        prune = ReplicateRequest(sender=ctx.id, epoch=self.mem.ring.epoch, prune_all=True)
        await asyncio.gather(*(self.send(m, prune) for m in self.mem.peers() if m.id not in keep))

    async def hand_over(self) -> None:
        """Before a graceful leave (node/leaving.py): every successor holds every job of ours as it is now
        (queued, or leased and to whom: the promoter leaves a thief's run alone) and every result."""
        ctx = self.ctx
        succ = {m.id for m in self.mem.successors(ctx.id)}
        if not succ:
            return
        for batch in self._batches(self.store.jobs_of, lambda j: j.spec.id):
            await self.replicate(ReplicateRequest(sender=ctx.id, epoch=0, jobs=batch))
        need = succ - self.synced
        for batch in (self._batches(self.store.results_of, lambda r: r.job_id) if need else ()):
            await self.replicate(ReplicateRequest(sender=ctx.id, epoch=0, results=batch), only=need)
        pending = self.store.uncopied_of(ctx.id)
        if pending:
            await self.replicate(ReplicateRequest(sender=ctx.id, epoch=0, results=list(pending.values())))
            self.store.mark_copied(list(pending))
        self.synced |= need

    def _batches(self, rows_of: Callable, key: Callable, limit: int = 2000, max_bytes: int = 4 << 20):
        """Rows of ours in id order, in batches of at most `limit` rows and about `max_bytes`, so one copy
        of many large jobs never becomes one huge message."""
        after = ""
        while True:
            rows = rows_of(self.ctx.id, after=after, limit=limit)
            if not rows:
                return
            after = key(rows[-1])
            batch: list = []
            size = 0
            for r in rows:
                n = _size(r)
                if batch and size + n > max_bytes:
                    yield batch
                    batch, size = [], 0
                batch.append(r)
                size += n
            yield batch

    # ---- a departed owner's copies ----------------------------------------------------------------------------
    async def handoff(self, dead: Member, promoter: Member) -> None:
        """We hold replicas of a departed owner that someone else now covers: send them there."""
        ctx = self.ctx
        for _ in range(20):
            try:
                while True:
                    jobs = self.store.jobs_of(dead.id, limit=2000)
                    res = self.store.results_of(dead.id, limit=2000)
                    if not jobs and not res:
                        return
                    await ctx.peers.call(promoter.ip, promoter.port, "/peer/handoff",
                                         HandoffRequest(sender=ctx.id, epoch=self.mem.ring.epoch, dead=dead.id,
                                                        jobs=jobs, results=res), ReportResponse)
                    self.store.drop_owner(dead.id, [j.spec.id for j in jobs] + [r.job_id for r in res])
            except (PeerError, ProtocolError) as e:
                ctx.log.warning("handoff_retry", dead=dead.id, to=promoter.id, error=str(e))
                await asyncio.sleep(0.5)
                p = self.mem.promoter_for(dead.location)
                if p is None:
                    return
                if p.id == ctx.id:
                    assert self.owning is not None
                    ids = [j.spec.id for j in self.store.jobs_of(dead.id)] + [
                        r.job_id for r in self.store.results_of(dead.id)]
                    await self.owning.adopt_unowned(dead.id, ids)
                    return
                promoter = p

    async def on_handoff(self, req: HandoffRequest) -> ReportResponse:
        """A departed owner's copies, sent by a node that held them, to this node that covers the owner's
        position now. What this node holds already of them it takes as promoted; the rest it takes only if
        no member of the ring has them (a job promoted elsewhere must not get a second owner)."""
        ctx, mem = self.ctx, self.mem
        if ctx.id in (req.sender, req.dead):
            raise ProtocolError("a handoff from or of this node itself refused", 403)
        stray = next((j for j in req.jobs if j.owner != req.dead), None)
        if stray is not None:
            raise ProtocolError(f"handoff of job {stray.spec.id}, owned by {stray.owner}, not by {req.dead}", 403)
        if mem.member(req.dead) is not None and req.epoch <= mem.ring.epoch:
            raise ProtocolError(f"node {req.dead} is a member of ring epoch {mem.ring.epoch}: nothing to hand off",
                                409)
        assert self.owning is not None
        ids = [j.spec.id for j in req.jobs] + [r.job_id for r in req.results]
        known = self.store.held_ids(ids, frozenset({req.dead}))  # copies of the dead owner's we hold already
        self.owning.adopt(req.dead, sorted(known), via=req.sender)
        fresh = [i for i in ids if i not in known]
        got: list[str] = []
        if fresh:  # held here under another owner (ours, a member's) or not at all: the grid decides
            want = set(fresh)
            got = self.store.put_jobs([j for j in req.jobs if j.spec.id in want])
            have = self.store.get_results(fresh)
            self.store.put_result_replicas(req.dead, [r for r in req.results if r.job_id in want
                                                      and r.job_id not in have], [], me=ctx.id)
            held = sorted(self.store.held_ids(fresh, frozenset({req.dead})))
            _, undecided = await self.owning.adopt_unowned(req.dead, held, via=req.sender)
            if undecided:  # not kept: the sender keeps its copies and hands them again later
                self.store.drop_owner(req.dead, undecided)
                raise Unavailable(f"cannot tell yet whether another node owns {len(undecided)} of these jobs; "
                                  "hand them off again later", retry_after=0.5)
        return ReportResponse(recorded=sorted(known) + got, duplicates=[], unknown=[])


def _size(row: object) -> int:
    """About how many bytes a job or result adds to a message (its payload, source or value)."""
    spec = getattr(row, "spec", None)
    if spec is not None:
        return 256 + len(spec.payload or b"") + len(spec.source or "")
    return 256 + len(getattr(row, "value", None) or b"") + len(getattr(row, "stdout", "")) + len(
        getattr(row, "stderr", ""))
