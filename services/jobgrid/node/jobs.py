"""The job lifecycle's shell on an owner: it loads what an event needs, asks the pure `Lifecycle` what
to do, and carries the instructions out (store, replicate, notify, count, log).

Every final result, whatever led to it (a run reported, a cancel, a failed dependency, the crash limit),
leaves through `_finish`: recorded once (first wins), copied to the replicas, only then marked `copied`
and handed to waiting clients, and counted once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ..batching import GroupCommit
from ..errors import JobgridError, ProtocolError, Unavailable
from ..logs import bind_cause, current_cause
from ..membership import RingChange
from ..protocol import (
    CancelRequest, JobRecord, JobSpec, Lease, LeaseNote, RenewRequest, ReplicateRequest, ReportRequest, ReportResponse,
    Result, RingState, StealRequest, StealResponse,
)
from . import lifecycle as lc
from .context import NodeContext
from .counts import QueueCounts
from .peers import PeerError
from .replication import Replication
from .ring_io import RingKeeper
from .search import Search
from .waiters import Waiters


class LocalRunner(Protocol):
    """What the job service needs of this node's runner to hand it new jobs directly."""

    @property
    def want(self) -> int: ...

    def take(self, leases: list[Lease]) -> None: ...


class JobService:
    def __init__(self, ctx: NodeContext, keeper: RingKeeper, replication: Replication, search: Search,
                 waiters: Waiters, counts: QueueCounts) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.keeper = keeper
        self.replication = replication
        self.search = search
        self.waiters = waiters
        self.counts = counts
        self.life = lc.Lifecycle(lc.Policy(lease_ttl=ctx.t.lease_ttl, max_crashes=ctx.s.max_crashes))
        self.submits: GroupCommit[JobSpec, tuple[list[str], list[str]]] = GroupCommit(self._flush_submits)
        self.reports: GroupCommit[Result, ReportResponse] = GroupCommit(self._flush_reports)
        self.local_runner: LocalRunner | None = None  # set by the node's Runner
        # (owner id, results) -> a finished run of ours reported to a job's owner (Owners.report, set by Grid)
        self.report_to: Callable[[str, list[Result]], Awaitable[object]] | None = None
        self.duplicates_dropped = 0
        self.done_times: deque[float] = deque(maxlen=100_000)
        keeper.listeners.append(self._ring_changed)
        replication.owning = self

    def _event(self, cls: type, **kw) -> list[lc.Instruction]:
        return self.life.handle(cls(cause=current_cause() or "", now=time.time(), **kw))

    def _log_jobs(self, event: str, ids: Sequence[str], **kw) -> None:
        """A job transition: one info line for the batch (with its ids), one debug line per job."""
        if not ids:
            return
        log = self.ctx.log
        log.info(event.replace("job_", "jobs_", 1), job_ids=list(ids), **kw)
        for i in ids:
            log.debug(event, job_id=i)

    # ---- submitted ----------------------------------------------------------------------------------
    async def submit(self, specs: list[JobSpec], retry: bool = False) -> tuple[list[str], list[str]]:
        self.keeper.require_accepting()
        if len({s.id for s in specs}) != len(specs):
            raise ProtocolError("duplicate job ids in one submission", 422)
        if self.counts.get().active + len(specs) > self.ctx.s.max_queued:
            raise Unavailable(f"queue full ({self.ctx.s.max_queued} jobs); retry later", 503, retry_after=2.0)
        existing: list[str] = []
        if retry:  # a resubmission: jobs of an earlier attempt may exist anywhere; never make a second one
            v = await self.search.find([s.id for s in specs])
            if v.undetermined:
                raise Unavailable(f"cannot tell yet whether {len(v.undetermined)} of these jobs exist (some nodes "
                                  "that might hold them did not answer); retry", 503, retry_after=0.5)
            existing = [s.id for s in specs if s.id in v.found]
            specs = [s for s in specs if s.id not in v.found]
            if not specs:
                return [], existing
        acc, ex = await self.submits.submit(specs)
        self._log_jobs("job_submitted", acc, existing=ex + existing)
        return acc, ex + existing

    async def _flush_submits(self, groups: list[list[JobSpec]]) -> list[tuple[list[str], list[str]]]:
        self.keeper.require_accepting()
        ctx = self.ctx
        try:
            [store] = self._event(lc.Submitted, owner=ctx.id, specs=[s for g in groups for s in g])
        except ValueError as e:
            raise ProtocolError(str(e), 422) from None
        assert isinstance(store, lc.Store)
        # an idle local runner takes its jobs in the same transaction (the best queued ones, as its own
        # lease would): no second transaction, no wake-up of the runner loop before the job starts
        runner = self.local_runner
        want = runner.want if runner is not None and ctx.joined.is_set() else 0
        with self.store.transaction():
            fresh = set(self.store.put_jobs(store.records))
            leases = self._lease(ctx.id, want) if fresh and want > 0 else []
        if leases and runner is not None:
            runner.take(leases)
        if fresh:
            new = [r for r in store.records if r.spec.id in fresh]
            waiting = sum(1 for r in new if r.state == lc.JobState.WAITING)
            before = self.counts.get()
            self.counts.stored(queued=len(new) - waiting - len(leases), leased=len(leases), waiting=waiting)
            if before.queued == 0 and len(new) - waiting > len(leases):
                ctx.signals.beat_now.set()  # jobs wait here now: the others' idle runners learn it at once
            # the rows are committed here: a runner may start them while the replicas are written (the ack
            # still waits for them; a job whose replication fails stays queued here either way)
            ctx.signals.wake_runner.set()
            await self.replication.replicate(ReplicateRequest(sender=ctx.id, epoch=0, jobs=new))
            ctx.metrics.submitted.inc(len(fresh))
        return [([s.id for s in g if s.id in fresh], [s.id for s in g if s.id not in fresh]) for g in groups]

    # ---- leased, stolen, renewed, released ----------------------------------------------------------------
    def _lease(self, holder: str, count: int) -> list[Lease]:
        out: list[Lease] = []
        for i in self._event(lc.LeaseAsked, owner=self.ctx.id, holder=holder, count=count,
                             serving=self.keeper.takes_work(), holder_known=self.ctx.mem.member(holder) is not None):
            assert isinstance(i, lc.Lease)
            recs = self.store.lease(self.ctx.id, i.holder, i.count, i.until, time.time())
            out = [Lease(record=r, lease_until=i.until) for r in recs]
            self._log_jobs("job_stolen" if i.stolen else "job_leased", [r.spec.id for r in recs], runner=holder)
            if i.stolen and recs:  # copies learn who runs them: if we fail, the promoter leaves them to the thief
                notes = [LeaseNote(id=r.spec.id, holder=i.holder, until=i.until) for r in recs]
                self.ctx.spawn(self._note_leases(notes), "lease-note")
        return out

    async def _note_leases(self, notes: list[LeaseNote]) -> None:
        try:
            await self.replication.replicate(ReplicateRequest(sender=self.ctx.id, epoch=0, leases=notes))
        except JobgridError as e:  # a copy without the note only means a re-run if this node fails meanwhile
            self.ctx.log.debug("lease_note_not_copied", error=str(e), jobs=len(notes))

    def lease(self, holder: str, count: int) -> list[Lease]:
        """Jobs for a runner: this node's own (holder == this node) or a thief's."""
        leases = self._lease(holder, count)
        self.counts.leased(len(leases))
        return leases

    def on_steal(self, req: StealRequest) -> StealResponse:
        return StealResponse(leases=self.lease(req.runner, req.max_jobs))

    def on_renew(self, req: RenewRequest) -> ReportResponse:
        todo = self._event(lc.RenewAsked, holder=req.runner, ids=req.ids, serving=self.keeper.can_serve())
        if not todo:
            return ReportResponse(recorded=[], duplicates=[], unknown=list(req.ids))
        i = todo[0]
        assert isinstance(i, lc.Renew)
        ok = self.store.renew(self.ctx.id, i.holder, i.ids, i.until)
        lost = [j for j in req.ids if j not in set(ok)]
        return ReportResponse(recorded=ok, duplicates=[], unknown=lost, cancel=self.cancelled_of(lost))

    def cancelled_of(self, ids: list[str]) -> list[str]:
        """Of `ids`, those cancelled on the grid: their runners should kill them."""
        return [i for i, r in self.store.get_results(ids).items() if r.state == "cancelled"] if ids else []

    def release(self, holder: str, ids: list[str]) -> list[str]:
        """Prefetched jobs a runner gives back unstarted: queued again, the attempt undone."""
        back: list[str] = []
        for i in self._event(lc.Released, holder=holder, ids=ids):
            assert isinstance(i, lc.ReleaseLeases)
            back = self.store.release(self.ctx.id, i.holder, i.ids)
        self.counts.changed()
        self.ctx.signals.wake_runner.set()
        return back

    # ---- reported ------------------------------------------------------------------------------------------
    async def on_report(self, req: ReportRequest) -> ReportResponse:
        return await self.report(req.results)

    async def report(self, results: list[Result]) -> ReportResponse:
        self.keeper.require_serving()
        return await self.reports.submit(results)

    async def _flush_reports(self, groups: list[list[Result]]) -> list[ReportResponse]:
        self.keeper.require_serving()
        flat = [r for g in groups for r in g]
        held = {i: rec for i, (rec, _) in self.store.get_jobs([r.job_id for r in flat]).items()}
        recorded: set[str] = set()
        requeued: set[str] = set()
        dups: set[str] = set()
        for i in self._event(lc.Reported, owner=self.ctx.id, results=flat, held=held):
            if isinstance(i, lc.Requeue):
                requeued.update(await self._requeue(i))
            elif isinstance(i, lc.Finish):
                rec, dup = await self._finish(i)
                recorded.update(r.job_id for r in rec)
                dups.update(dup)
        out = []
        for g, cx in zip(groups, self.reports.contexts or [None] * len(groups)):
            done = [r.job_id for r in g if r.job_id in recorded or r.job_id in requeued]
            dup = [r.job_id for r in g if r.job_id in dups]
            unknown = [r.job_id for r in g if r.job_id not in recorded and r.job_id not in requeued
                       and r.job_id not in dups]
            if cx is not None:  # each reporter's lines under its own causal id
                cx.run(self._log_reports, g, recorded, requeued, dups, unknown)
            out.append(ReportResponse(recorded=done, duplicates=dup, unknown=unknown))
        return out

    def _log_reports(self, results: list[Result], recorded: set[str], requeued: set[str], dups: set[str],
                     unknown: list[str]) -> None:
        self._log_jobs("job_recorded", [r.job_id for r in results if r.job_id in recorded])
        self._log_jobs("job_retried", [r.job_id for r in results if r.job_id in requeued])
        self._log_jobs("job_duplicate_dropped", [r.job_id for r in results if r.job_id in dups])
        self._log_jobs("job_report_unknown", unknown)

    async def _requeue(self, i: lc.Requeue) -> list[str]:
        """Back to the queue (a retry, or dependencies met), copied to the replicas."""
        self.store.requeue(i.records)
        ids = [r.spec.id for r in i.records]
        if i.reason == "retry":
            self.ctx.metrics.retried.inc(len(ids))
        else:
            self.ctx.log.info(i.reason, job_ids=ids)
        self.counts.changed()
        await self.replication.replicate(ReplicateRequest(sender=self.ctx.id, epoch=0, jobs=i.records))
        self.ctx.signals.wake_runner.set()
        return ids

    async def _finish(self, i: lc.Finish) -> tuple[list[Result], list[str]]:
        """The one path of a final result: record (first wins), count, copy, then hand out."""
        ctx = self.ctx
        recorded, dups, _ = self.store.record_results(ctx.id, i.results, i.ttl)
        self.duplicates_dropped += len(dups)
        ctx.metrics.duplicates.inc(len(dups))
        if not recorded:
            return recorded, dups
        now = time.time()
        by_state = {"succeeded": ctx.metrics.succeeded, "failed": ctx.metrics.failed,
                    "cancelled": ctx.metrics.cancelled}
        for r in recorded:
            by_state[r.state].inc()
            self.done_times.append(now)
        self.counts.changed()
        ids = [r.job_id for r in recorded]
        try:
            await self.replication.replicate(ReplicateRequest(sender=ctx.id, epoch=0, results=recorded))
        except JobgridError:  # not handed out: the resync copies them and marks them copied later
            ctx.signals.resync.set()
            raise
        self.store.mark_copied(ids)
        self.waiters.notify(ids)
        return recorded, dups

    def copies_arrived(self, result_ids: Sequence[str]) -> None:
        """Result copies written here (from their owner, or marked by a resync): wake their waiters."""
        self.waiters.notify(result_ids)

    # ---- cancel asked ----------------------------------------------------------------------------------------
    async def cancel(self, ids: list[str], forward: bool = True) -> list[str]:
        """Cancel queued and running jobs: the owner records a cancelled result (first wins) and the
        runner holding a lease learns it on its next renew and kills the job's worker."""
        self.keeper.require_serving()
        held = {i: rec for i, (rec, _) in self.store.get_jobs(ids).items()}
        out: list[str] = []
        for i in self._event(lc.CancelAsked, owner=self.ctx.id, ids=ids, held=held):
            if isinstance(i, lc.Finish):
                recorded, _ = await self._finish(i)
                for r in recorded:
                    self.ctx.log.info("job_cancelled", job_id=r.job_id, error=r.error)
                out += [r.job_id for r in recorded]
            elif isinstance(i, lc.Forward) and forward:
                out += await self._forward(i.owner, i.ids)
            elif isinstance(i, lc.Unknown) and forward and self.ctx.mem.peers():
                v = await self.search.find(i.ids, {})
                for owner in {r.owner for r in v.found.values() if isinstance(r, JobRecord)} - {self.ctx.id}:
                    out += await self._forward(owner, [j for j, r in v.found.items()
                                                       if isinstance(r, JobRecord) and r.owner == owner])
        return out

    async def _forward(self, owner: str, ids: list[str]) -> list[str]:
        """Ask the owner of `ids` (we hold replicas of them, or found them elsewhere) to cancel them."""
        m = self.ctx.mem.member(owner)
        if m is None:
            return []
        try:
            got = await self.ctx.peers.call(m.ip, m.port, "/jobs/cancel?forwarded=1", CancelRequest(ids=ids), dict)
            return list(got.get("cancelled", []))
        except (PeerError, ProtocolError):
            return []

    # ---- dependencies, lapsed leases, expired results ----------------------------------------------------------
    async def settle_dependencies(self) -> int:
        """Release waiting jobs whose dependencies all succeeded; fail those with a failed dependency."""
        waiting = self.store.waiting_jobs(self.ctx.id)
        if not waiting:
            return 0
        deps = sorted({d for rec in waiting for d in rec.spec.after})
        found: dict[str, Result] = dict(self.store.servable_results(deps, self.ctx.mem.member_ids))
        missing = [d for d in deps if d not in found]
        if missing and self.ctx.mem.peers():
            v = await self.search.find(missing, {}, want_results=True)
            found.update({k: r for k, r in v.found.items() if isinstance(r, Result)})
        n = 0
        for i in self._event(lc.DependenciesSettled, owner=self.ctx.id, waiting=waiting, results=found):
            if isinstance(i, lc.Requeue):
                n += len(await self._requeue(i))
            elif isinstance(i, lc.Finish):
                recorded, _ = await self._finish(i)
                for r in recorded:
                    self.ctx.log.info("dependency_failed", job_id=r.job_id, error=r.error)
                n += len(recorded)
        return n

    async def dependency_loop(self, interval: float = 0.3) -> None:
        while not self.ctx.stopping:
            await asyncio.sleep(interval)
            if not self.keeper.can_serve():
                continue
            try:
                await self.settle_dependencies()
            except JobgridError as e:
                self.ctx.log.warning("dependency_check_failed", error=str(e))

    def _expire_strangers(self) -> list[str]:
        """Leases held by nodes that are not (or no longer) in the ring go back to the queue."""
        return self._expire_leases(members=self.ctx.mem.member_ids)

    def _expire_leases(self, holders: Sequence[str] = (), members: frozenset[str] | None = None) -> list[str]:
        back: list[str] = []
        for i in self._event(lc.LeasesLapsed, holders=holders, members=members):
            assert isinstance(i, lc.ExpireLeases)
            if i.members is not None:
                back = self.store.expire_leases_of_strangers(self.ctx.id, i.members)
            else:
                back = self.store.expire_leases(self.ctx.id, i.before, holders=i.holders)
        if back:
            self.ctx.metrics.lease_expired.inc(len(back))
            why = {"reason": "holder left the ring"} if members is not None else {}
            self._log_jobs("job_lease_expired", back, **why, **({"holders": list(holders)} if holders else {}))
            self.counts.changed()
            self.ctx.signals.wake_runner.set()
        return back

    async def _expire_results(self) -> None:
        ctx = self.ctx
        now = time.time()
        for i in self._event(lc.ResultsExpired, ids=self.store.expired_results(ctx.id, now)):
            assert isinstance(i, lc.DropResults)
            await self.replication.replicate(ReplicateRequest(sender=ctx.id, epoch=0, drop=i.ids))
            ctx.log.info("results_expired", job_ids=i.ids[:100], count=len(i.ids))
        self.store.expire_results(now)  # the owners' drops reach replicas; a departed owner's expire here too

    async def sweeper(self) -> None:
        ctx = self.ctx
        while not ctx.stopping:
            await asyncio.sleep(min(0.5, ctx.t.lease_ttl / 3))
            if not self.keeper.can_serve():
                continue
            bind_cause(prefix="sweep-")
            back = self._expire_leases()
            if back:
                ctx.event("leases_expired", jobs=len(back))
            await self._expire_results()

    # ---- owner changed -----------------------------------------------------------------------------------------
    def adopt(self, old: str, ids: Sequence[str] | None, *, via: str | None = None) -> int:
        """Rows of `old` (all, or `ids`) become this node's: promotion, handoff, orphan adoption. A job a
        thief still runs stays leased to it (it renews with us now); one leased to a node that is gone
        goes back to the queue."""
        ctx = self.ctx
        n = 0
        for i in self._event(lc.OwnerChanged, old=old, new=ctx.id, ids=ids):
            assert isinstance(i, lc.Adopt)
            n = self.store.adopt(i.old, i.new, i.ids, lease_grace=time.time() + ctx.t.lease_ttl)
        self._expire_strangers()
        # the adopted rows are ours now: no successor is known to hold them (the other copies were under the
        # old owner, and are handed here and dropped there), so the resync copies everything of ours again
        if ids is None or ids:
            self.replication.synced.clear()
        if n:
            ctx.metrics.promoted.inc(n)
            ctx.promoted(old, n, epoch=ctx.mem.ring.epoch, **({"via": via} if via else {}))
            ctx.event("replicas_promoted", dead=old, jobs=n, **({"via": via} if via else {}))
        self.counts.changed()
        ctx.signals.resync.set()
        ctx.signals.wake_runner.set()
        return n

    async def adopt_unowned(self, old: str, ids: Sequence[str], *, via: str | None = None) -> tuple[int, list[str]]:
        """Rows of `old` held here that no member of the ring has: adopt those, drop the ones a member has
        (a job promoted elsewhere must not get a second owner; a finished run of ours goes to its owner),
        and return (adopted, the ids nobody can tell about yet)."""
        if not ids:
            return 0, []
        v = await self.search.find(list(ids), {}, here=False, members_only=True)
        ours = self.store.get_results([i for i, f in v.found.items() if isinstance(f, JobRecord)])
        for i, r in ours.items():  # the grid still has it queued, we hold a finished run of it
            there = v.found[i]
            assert isinstance(there, JobRecord)
            if self.report_to is not None:
                await self.report_to(there.owner, [r])
        self.store.drop_owner(old, list(v.found))
        n = self.adopt(old, list(v.absent), via=via) if v.absent else 0
        if v.absent:
            self.ctx.event("orphans_adopted", owner=old, jobs=len(v.absent))
        return n, list(v.undetermined)

    def _ring_changed(self, change: RingChange, ring: RingState) -> None:
        for m in change.promote:
            self.adopt(m.id, None)
        if change.removed:  # leases held by runners that left the ring: back to the queue at once
            self._expire_strangers()
