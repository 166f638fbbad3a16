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

from ..protocol import Lease, RenewRequest, ReportResponse, Result, StealRequest, StealResponse
from ..logs import bind_cause
from .grid import Grid
from .peers import PeerError
from .pool import WorkerPool

log = structlog.get_logger("jobgrid.runner")


class Runner:
    def __init__(self, grid: Grid, pool: WorkerPool, size: int) -> None:
        self.grid = grid
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
        grid.local_runner = self  # new jobs come straight here when we want them (Grid._flush_submits)

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
        g = self.grid
        while not g.stopping:
            if self.want > 0 and g.joined.is_set() and g.can_serve():
                bind_cause(prefix="run-")  # one causal id per lease or steal batch; its jobs' tasks inherit it
                # prefetch up to `size` more local jobs: they wait for a worker in the pool, so short
                # jobs need one lease transaction per batch instead of one per job
                leases = g.lease_local(g.id, self.want)
                if leases:
                    g._counts_at = 0.0
                    self._dispatch(leases, g.id)
                    continue
                if await self._steal():
                    continue
            g.wake_runner.clear()
            try:
                await asyncio.wait_for(g.wake_runner.wait(), timeout=0.05 if self.want > 0 else 1.0)
            except TimeoutError:
                pass

    def take(self, leases: list[Lease]) -> None:
        """Jobs the grid leased to us as it stored them (it has counted them in already)."""
        self._dispatch(leases, self.grid.id)

    async def _steal(self) -> bool:
        g = self.grid
        now = time.monotonic()
        best, best_n = None, 0
        for m in g.mem.peers():
            n = g.mem.active.get(m.id, 0)
            if n > best_n and self.empty_until.get(m.id, 0) <= now and g.mem.status(m.id, now) == "alive":
                best, best_n = m, n
        if best is None:
            return False
        want = min(self.want, max(1, best_n // 2))
        try:
            resp = await g.peers.call(best.ip, best.port, "/peer/steal",
                                      StealRequest(runner=g.id, epoch=g.mem.ring.epoch, max_jobs=want),
                                      StealResponse, timeout=2.0)
        except (PeerError, Exception):  # noqa: BLE001 - a failed steal just means: try later
            self.empty_until[best.id] = now + 0.5
            return False
        if not resp.leases:
            g.mem.active[best.id] = 0
            self.empty_until[best.id] = now + 0.1 + random.random() * 0.1
            return False
        g.metrics.stolen.inc(len(resp.leases))
        self._dispatch(resp.leases, best.id)
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
        g = self.grid
        rec = lease.record
        timeout = rec.spec.timeout or g.t.job_timeout
        g.metrics.busy.set(len(self.running))

        def started() -> None:
            self.waiting.pop(rec.spec.id, None)
            g.metrics.started.inc()
            self.started_jobs += 1
            if len(self.waiting) > self.size:  # deep prefetch: give it back if this job turns out long
                asyncio.get_running_loop().call_later(0.02, self._check_long, rec.spec.id)
        try:
            async with self._gate:
                if not g.can_serve():  # fenced: the grid may already be running it elsewhere
                    self._return_unstarted(rec.spec.id, owner)
                    return
                log.debug("job_started", job_id=rec.spec.id, node=g.id, owner=owner)
                result = await self.pool.run(rec, timeout=timeout, on_start=started)
        except asyncio.CancelledError:
            self.waiting.pop(rec.spec.id, None)
            self.running.pop(rec.spec.id, None)
            g.metrics.busy.set(len(self.running))
            raise
        except Exception as e:  # noqa: BLE001 - the pool failed, not the job: let the lease lapse
            log.error("pool_failed", job_id=rec.spec.id, error=repr(e))
            self.waiting.pop(rec.spec.id, None)
            self.running.pop(rec.spec.id, None)
            return
        result.node = g.id
        result.attempts = rec.attempts
        took = max(0.0, result.finished_at - result.started_at)
        self.avg_run += 0.2 * (took - self.avg_run)
        if took >= 0.005 and len(self.waiting) > self.size:
            self._give_back()
        log.debug("job_finished", job_id=rec.spec.id, node=g.id, state=result.state)
        g.metrics.run_time.observe(max(0.0, result.finished_at - result.started_at))
        self.running.pop(rec.spec.id, None)
        g.metrics.busy.set(len(self.running))
        self.outbox[owner].append(result)
        self.outbox_event.set()
        g.wake_runner.set()

    def _return_unstarted(self, jid: str, owner: str) -> None:
        """A leased job that never started goes back: our own at once (queued again, attempt undone); a
        stolen one when its owner's lease lapses (we cannot reach a majority, maybe not the owner either)."""
        g = self.grid
        self.waiting.pop(jid, None)
        self.running.pop(jid, None)
        g.metrics.busy.set(len(self.running))
        self.returned_unstarted += 1
        if owner == g.id:
            g.store.release(g.id, g.id, [jid])
            g._counts_at = 0.0
        log.info("prefetch_returned_unstarted", job_id=jid, node=g.id, owner=owner, reason="no quorum")

    def _check_long(self, jid: str) -> None:
        if jid in self.running and jid not in self.waiting and len(self.waiting) > self.size:
            self.avg_run = max(self.avg_run, 0.02)  # leave the deep prefetch until short jobs return
            self._give_back()

    def _give_back(self) -> None:
        """Jobs turned out long: put the own prefetched jobs beyond `size` back, for other runners."""
        g = self.grid
        extra = [j for j in list(self.waiting)[self.size:] if self.running.get(j, ("",))[0] == g.id]
        if not extra or not g.can_serve():
            return
        for jid in extra:
            self.waiting.pop(jid, None)
            held = self.running.pop(jid, None)
            if held is not None:
                held[1].cancel()
        back = g.store.release(g.id, g.id, extra)
        log.debug("prefetch_released", jobs=len(back), node=g.id)
        g._counts_at = 0.0
        g.wake_runner.set()

    async def report_loop(self) -> None:
        g = self.grid
        while not g.stopping:
            await self.outbox_event.wait()
            self.outbox_event.clear()
            pending = {o: rs for o, rs in self.outbox.items() if rs}
            self.outbox.clear()
            outcomes = await asyncio.gather(*(self._deliver(o, rs) for o, rs in pending.items()),
                                            return_exceptions=True)
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
        g = self.grid
        bind_cause(prefix="rep-")  # this delivery's causal id: it travels to the owner in the header
        ids = [r.job_id for r in results]
        log.info("results_reported", job_ids=ids, node=g.id, owner=owner)
        for i in ids:
            log.debug("job_reported", job_id=i, node=g.id, owner=owner)
        resp: ReportResponse | None
        if owner == g.id and g.mem.is_member:
            try:
                resp = await g.report(results)
            except Exception as e:  # noqa: BLE001 - not serving right now (no quorum): keep and retry
                log.debug("report_deferred", error=str(e))
                return results
        else:
            resp = await g._report_to(owner, results)
        if resp is None:
            return results
        unknown = set(resp.unknown)
        if not unknown:
            return []
        # the owner no longer holds these jobs: find who does
        left = [r for r in results if r.job_id in unknown]
        try:
            found = await g.lookup_everywhere([r.job_id for r in left]) if g.mem.peers() else {}
        except Exception:  # noqa: BLE001
            return left
        local = g.store.get_jobs([r.job_id for r in left])
        again: dict[str, list[Result]] = defaultdict(list)
        keep: list[Result] = []
        for r in left:
            where = found.get(r.job_id)
            if isinstance(where, Result):
                g.metrics.duplicates.inc()
                continue
            if r.job_id in local and local[r.job_id][0].owner == g.id:
                again[g.id].append(r)
            elif where is not None and hasattr(where, "owner") and where.owner != owner:
                again[where.owner].append(r)
            elif where is not None:
                keep.append(r)  # its ownership is moving (promotion, handoff): ask again, never drop it
            # nobody holds it: cancelled or expired; drop the result
        for o, rs in again.items():
            self.outbox[o].extend(rs)
        if again:
            self.outbox_event.set()
        return keep

    async def renew_loop(self) -> None:
        g = self.grid
        while not g.stopping:
            await asyncio.sleep(g.t.lease_ttl / 3)
            by_owner: dict[str, list[str]] = defaultdict(list)
            for jid, (owner, _) in list(self.running.items()):
                by_owner[owner].append(jid)
            for owner, ids in by_owner.items():
                if owner == g.id:
                    if g.can_serve():
                        ok = g.store.renew(g.id, g.id, ids, time.time() + g.t.lease_ttl)
                        self.kill(g.cancelled_of([i for i in ids if i not in set(ok)]))
                    continue
                m = g.mem.member(owner)
                if m is None:
                    continue
                try:
                    resp = await g.peers.call(m.ip, m.port, "/peer/renew", RenewRequest(runner=g.id, ids=ids),
                                              ReportResponse, timeout=g.t.lease_ttl / 3)
                    self.kill(resp.cancel)
                except Exception:  # noqa: BLE001 - the owner may be gone; its lease will lapse
                    pass

    def kill(self, ids: list[str]) -> None:
        """Stop running jobs cancelled on the grid: cancelling the task kills the job's worker."""
        for jid in ids:
            held = self.running.pop(jid, None)
            if held is not None:
                log.info("job_killed_cancelled", job_id=jid, node=self.grid.id)
                held[1].cancel()
        self.grid.metrics.busy.set(len(self.running))

    def snapshot(self) -> list[dict]:
        return self.pool.snapshot()

    async def close(self) -> None:
        for _, t in list(self.running.values()):
            t.cancel()
        await asyncio.gather(*(t for _, t in self.running.values()), return_exceptions=True)
