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

from ..protocol import Lease, RenewRequest, ReportRequest, ReportResponse, Result, StealRequest, StealResponse
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

    @property
    def free(self) -> int:
        return self.size - len(self.running)

    async def loop(self) -> None:
        g = self.grid
        while not g.stopping:
            if self.free > 0 and g.joined.is_set() and g.can_serve():
                # prefetch up to `size` more local jobs: they wait for a worker in the pool, so short
                # jobs need one lease transaction per batch instead of one per job
                leases = g.lease_local(g.id, self.free + self.size)
                if leases:
                    g._counts_at = 0.0
                    self._dispatch(leases, g.id)
                    continue
                if await self._steal():
                    continue
            g.wake_runner.clear()
            try:
                await asyncio.wait_for(g.wake_runner.wait(), timeout=0.05 if self.free > 0 else 1.0)
            except TimeoutError:
                pass

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
        want = min(self.free, max(1, best_n // 2))
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

    async def _execute(self, lease: Lease, owner: str) -> None:
        g = self.grid
        rec = lease.record
        timeout = rec.spec.timeout or g.t.job_timeout
        g.metrics.started.inc()
        self.started_jobs += 1
        g.metrics.busy.set(len(self.running))
        try:
            result = await self.pool.run(rec, timeout=timeout)
        except asyncio.CancelledError:
            self.running.pop(rec.spec.id, None)
            g.metrics.busy.set(len(self.running))
            raise
        except Exception as e:  # noqa: BLE001 - the pool failed, not the job: let the lease lapse
            log.error("pool_failed", job_id=rec.spec.id, error=repr(e))
            self.running.pop(rec.spec.id, None)
            return
        result.node = g.id
        result.attempts = rec.attempts
        g.metrics.run_time.observe(max(0.0, result.finished_at - result.started_at))
        self.running.pop(rec.spec.id, None)
        g.metrics.busy.set(len(self.running))
        self.outbox[owner].append(result)
        self.outbox_event.set()
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
        for r in left:
            where = found.get(r.job_id)
            if isinstance(where, Result):
                g.metrics.duplicates.inc()
                continue
            if r.job_id in local and local[r.job_id][0].owner == g.id:
                again[g.id].append(r)
            elif where is not None and hasattr(where, "owner") and where.owner != owner:
                again[where.owner].append(r)
            # nobody holds it: cancelled or expired; drop the result
        for o, rs in again.items():
            self.outbox[o].extend(rs)
        if again:
            self.outbox_event.set()
        return []

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
