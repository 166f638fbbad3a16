"""The runner half of a node: take jobs from the own server first, steal from the busiest when idle.

Leases are renewed while jobs run and results are reported to each job's owner in batches; a
result stays in the outbox until an owner (or whoever now covers it) has recorded it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict

import structlog

from ..errors import JobgridError
from ..logs import bind_cause
from ..protocol import JobRecord, Lease, ReportResponse, Result
from .context import NodeContext
from .jobs import JobService
from .owners import Owners
from .pool import WorkerPool
from .ring_io import RingKeeper
from .search import Search

log = structlog.get_logger("jobgrid.runner")


class Runner:
    """Runs jobs from whichever owner they belong to, through `Owners` (local or remote alike)."""

    def __init__(self, ctx: NodeContext, keeper: RingKeeper, jobs: JobService, owners: Owners, search: Search,
                 pool: WorkerPool, size: int) -> None:
        self.ctx = ctx
        self.keeper = keeper
        self.jobs = jobs
        self.owners = owners
        self.search = search
        self.pool = pool
        self.size = size
        self.running: dict[str, tuple[str, asyncio.Task]] = {}   # job id -> (owner id, task)
        self.outbox: dict[str, list[Result]] = defaultdict(list)  # owner id -> results to report
        self.outbox_event = asyncio.Event()
        self.empty_until: dict[str, float] = {}                   # peer -> don't ask before
        self.started_jobs = 0
        self.waiting: dict[str, None] = {}  # leased, waiting for a worker (ordered)
        self.avg_run = 0.1  # moving average of job run time (s): short jobs get a deeper prefetch
        # one job per worker goes on to the pool; prefetched ones wait here, where a node that lost quorum
        # (paused, cut off) can still give them back unstarted instead of starting them behind the fence
        self._gate = asyncio.Semaphore(size)
        self.returned_unstarted = 0
        self.delivering = 0  # results on their way to their owners now (out of the outbox, not yet recorded)
        jobs.local_runner = self  # new jobs come straight here when we want them (JobService._flush_submits)

    @property
    def free(self) -> int:
        return self.size - len(self.running)

    @property
    def want(self) -> int:
        """How many jobs to lease (or steal) now: the free workers plus a prefetch that waits in the pool.

        Jobs are leased when fewer than `size` are held; `size` more wait for a worker (one lease
        transaction or steal round trip per batch). Short jobs (< 5 ms on average) get 16 x `size`,
        topped up once half of it is used, so a lease, a steal and a report carry many of them and
        the workers never wait for a steal round trip; long jobs keep the shallow prefetch so a few
        runners do not hoard work the others could run. 0: hold enough.
        """
        held = len(self.running)
        if self.avg_run < 0.005:
            depth = 16 * self.size
            return self.size + depth - held if held < self.size + depth // 2 else 0
        if self.avg_run >= 0.05:  # long jobs: a lease (or steal) per job costs little next to the job, and a
            return self.size - held  # held-back job would keep an idle runner elsewhere waiting at the end
        return 2 * self.size - held if held < self.size else 0

    async def loop(self) -> None:
        ctx = self.ctx
        wake = ctx.signals.wake_runner
        while not ctx.stopping:
            if self.want > 0 and ctx.joined.is_set() and self.keeper.takes_work():
                bind_cause(prefix="run-")  # one causal id per lease or steal batch; its jobs' tasks inherit it
                # prefetch up to `size` more local jobs: they wait for a worker in the pool, so short
                # jobs need one lease transaction per batch instead of one per job
                leases = await self.owners.local.lease(self.want)
                if leases:
                    self._dispatch(leases, ctx.id)
                    continue
                if await self._steal():
                    continue
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), timeout=0.05 if self.want > 0 else 1.0)
            except TimeoutError:
                pass

    def take(self, leases: list[Lease]) -> None:
        """Jobs the job service leased to us as it stored them (it has counted them in already)."""
        self._dispatch(leases, self.ctx.id)

    async def _steal(self) -> bool:
        mem = self.ctx.mem
        now = time.monotonic()
        best, best_n = None, 0
        for m in mem.peers():
            n = mem.active.get(m.id, 0)
            if n > best_n and self.empty_until.get(m.id, 0) <= now and mem.status(m.id, now) == "alive":
                best, best_n = m, n
        if best is None:
            return False
        try:
            leases = await self.owners.member(best).lease(min(self.want, max(1, best_n // 2)))
        except (JobgridError, OSError):  # a failed steal just means: try later
            self.empty_until[best.id] = now + 0.5
            return False
        if not leases:
            mem.drained(best.id)
            self.empty_until[best.id] = now + 0.1 + random.random() * 0.1
            return False
        self.ctx.metrics.stolen.inc(len(leases))
        self._dispatch(leases, best.id)
        return True

    def _dispatch(self, leases: list[Lease], owner: str) -> None:
        for lease in leases:
            jid = lease.record.spec.id
            if jid in self.running:
                continue
            t = asyncio.ensure_future(self._execute(lease, owner))
            self.running[jid] = (owner, t)
            self.waiting[jid] = None

    async def _execute(self, lease: Lease, owner: str) -> None:
        ctx = self.ctx
        rec = lease.record
        timeout = rec.spec.timeout or ctx.t.job_timeout
        ctx.metrics.busy.set(len(self.running))

        def started() -> None:
            self.waiting.pop(rec.spec.id, None)
            ctx.metrics.started.inc()
            self.started_jobs += 1
            if len(self.waiting) > self.size:  # deep prefetch: give it back if this job turns out long
                asyncio.get_running_loop().call_later(0.02, self._check_long, rec.spec.id)
        try:
            async with self._gate:
                if not self.keeper.takes_work():  # fenced (the grid may run it elsewhere), or leaving
                    self._return_unstarted(rec, owner)
                    return
                log.debug("job_started", job_id=rec.spec.id, node=ctx.id, owner=owner)
                result = await self.pool.run(rec, timeout=timeout, on_start=started)
        except asyncio.CancelledError:
            self._forget(rec.spec.id)
            raise
        except Exception as e:  # noqa: BLE001 - the pool failed, not the job: let the lease lapse
            log.error("pool_failed", job_id=rec.spec.id, error=repr(e))
            self._forget(rec.spec.id)
            return
        result.node = ctx.id
        result.attempts = rec.attempts
        took = max(0.0, result.finished_at - result.started_at)
        self.avg_run += 0.2 * (took - self.avg_run)
        if took >= 0.005 and len(self.waiting) > self.size:
            self._give_back()
        log.debug("job_finished", job_id=rec.spec.id, node=ctx.id, state=result.state)
        ctx.metrics.run_time.observe(took)
        self._forget(rec.spec.id)
        self.outbox[owner].append(result)
        self.outbox_event.set()
        ctx.signals.wake_runner.set()

    def _forget(self, jid: str) -> None:
        self.waiting.pop(jid, None)
        self.running.pop(jid, None)
        self.ctx.metrics.busy.set(len(self.running))

    def _return_unstarted(self, rec: JobRecord, owner: str) -> None:
        """A leased job that never started goes back: our own at once (queued again, attempt undone); a
        stolen one when its owner's lease lapses (we cannot reach a majority, maybe not the owner either)."""
        jid = rec.spec.id
        self._forget(jid)
        self.returned_unstarted += 1
        if owner == self.ctx.id:
            self.jobs.release(self.ctx.id, [jid])
        log.info("prefetch_returned_unstarted", job_id=jid, node=self.ctx.id, owner=owner, reason="no quorum")

    def _check_long(self, jid: str) -> None:
        if jid in self.running and jid not in self.waiting and len(self.waiting) > self.size:
            self.avg_run = max(self.avg_run, 0.02)  # leave the deep prefetch until short jobs return
            self._give_back()

    def _give_back(self) -> None:
        """Jobs turned out long: put the own prefetched jobs beyond `size` back, for other runners."""
        me = self.ctx.id
        extra = [j for j in list(self.waiting)[self.size:] if self.running.get(j, ("",))[0] == me]
        if not extra or not self.keeper.can_serve():
            return
        for jid in extra:
            self.waiting.pop(jid, None)
            held = self.running.pop(jid, None)
            if held is not None:
                held[1].cancel()
        back = self.jobs.release(me, extra)
        log.debug("prefetch_released", jobs=len(back), node=me)

    # ---- a graceful leave (node/leaving.py) ----------------------------------------------------------------------
    def busy(self) -> int:
        """Jobs started here and not finished, plus results not yet recorded by their owners."""
        return (len(self.running) - len(self.waiting) + sum(len(rs) for rs in self.outbox.values())
                + self.delivering)

    def drain(self) -> int:
        """Leased jobs that have not started go back: our own to our queue at once, stolen ones when their
        owner's lease lapses or the ring drops us (whichever first). Returns how many."""
        return self._stop_jobs(list(self.waiting))

    def hand_back(self) -> int:
        """The grace period is over: stop every job still running here and give its lease back (as `drain`)."""
        return self._stop_jobs(list(self.running))

    def _stop_jobs(self, ids: list[str]) -> int:
        me, own = self.ctx.id, []
        for jid in ids:
            self.waiting.pop(jid, None)
            held = self.running.pop(jid, None)
            if held is None:
                continue
            held[1].cancel()  # kills the job's worker if it started
            if held[0] == me:
                own.append(jid)
        if own:
            self.jobs.release(me, own)
        self.ctx.metrics.busy.set(len(self.running))
        return len(ids)

    # ---- reporting ---------------------------------------------------------------------------------------
    async def report_loop(self) -> None:
        while not self.ctx.stopping:
            await self.outbox_event.wait()
            self.outbox_event.clear()
            pending = {o: rs for o, rs in self.outbox.items() if rs}
            self.outbox.clear()
            self.delivering = sum(len(rs) for rs in pending.values())
            try:
                outcomes = await asyncio.gather(*(self._deliver(o, rs) for o, rs in pending.items()),
                                                return_exceptions=True)
            finally:
                self.delivering = 0
            retry = False
            for (owner, rs), left in zip(pending.items(), outcomes):
                if isinstance(left, BaseException):  # never lose a result to an error: keep it, retry
                    log.warning("report_failed", owner=owner, error=repr(left))
                    left = rs
                if left:
                    self.outbox[owner].extend(left)
                    retry = True
            if retry:
                await asyncio.sleep(0.2)
                self.outbox_event.set()

    async def _deliver(self, owner: str, results: list[Result]) -> list[Result]:
        """Report to the owner (or whoever covers it now); returns what still needs delivering."""
        me = self.ctx.id
        bind_cause(prefix="rep-")  # this delivery's causal id: it travels to the owner in the header
        ids = [r.job_id for r in results]
        log.info("results_reported", job_ids=ids, node=me, owner=owner)
        for i in ids:
            log.debug("job_reported", job_id=i, node=me, owner=owner)
        resp: ReportResponse | None = await self.owners.report(owner, results)
        if resp is None:  # nobody to take them now (no quorum, owner unreachable): keep and retry
            return results
        unknown = set(resp.unknown)
        if not unknown:
            return []
        # the owner no longer holds these jobs: find who does
        left = [r for r in results if r.job_id in unknown]
        v = await self.search.find([r.job_id for r in left], {}, here=False) if self.ctx.mem.peers() else None
        if v is not None and v.undetermined:
            return left  # cannot tell where they are yet: ask again
        found = v.found if v is not None else {}
        local = self.ctx.store.get_jobs([r.job_id for r in left])
        again: dict[str, list[Result]] = defaultdict(list)
        keep: list[Result] = []
        for r in left:
            where = found.get(r.job_id, ...)
            if isinstance(where, Result) or where is None:  # recorded (or being copied) there already
                self.ctx.metrics.duplicates.inc()
                continue
            if r.job_id in local and local[r.job_id][0].owner == me:
                again[me].append(r)
            elif isinstance(where, JobRecord) and where.owner != owner:
                again[where.owner].append(r)
            elif isinstance(where, JobRecord):
                keep.append(r)  # its ownership is moving (promotion, handoff): ask again, never drop it
            # nobody holds it: cancelled or expired; drop the result
        for o, rs in again.items():
            self.outbox[o].extend(rs)
        if again:
            self.outbox_event.set()
        return keep

    # ---- leases and cancellation -------------------------------------------------------------------------------
    async def renew_loop(self) -> None:
        ctx = self.ctx
        while not ctx.stopping:
            await asyncio.sleep(ctx.t.lease_ttl / 3)
            by_owner: dict[str, list[str]] = defaultdict(list)
            for jid, (owner, _) in list(self.running.items()):
                by_owner[owner].append(jid)
            for owner, ids in by_owner.items():
                o = self.owners.of(owner)  # an owner that left: whoever promoted its jobs keeps our lease
                if o is None:
                    continue
                resp = await o.renew(ids)
                if resp is not None:
                    self.kill(resp.cancel)

    def kill(self, ids: list[str]) -> None:
        """Stop running jobs cancelled on the grid: cancelling the task kills the job's worker."""
        for jid in ids:
            held = self.running.pop(jid, None)
            if held is not None:
                log.info("job_killed_cancelled", job_id=jid, node=self.ctx.id)
                held[1].cancel()
        self.ctx.metrics.busy.set(len(self.running))

    def snapshot(self) -> list[dict]:
        return self.pool.snapshot()

    async def close(self) -> None:
        for _, t in list(self.running.values()):
            t.cancel()
        await asyncio.gather(*(t for _, t in self.running.values()), return_exceptions=True)
