"""The owner's side of a job's life: accept (group commit, then R copies), lease to its own runner or a
thief, record the first result, answer waits, cancel. A mixin of `Grid`, whose store, ring view,
replication and lookups it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Protocol

import msgspec

from ..errors import GridUnavailable, ProtocolError, Unavailable
from ..protocol import (
    CancelRequest, JobRecord, JobSpec, Lease, RenewRequest, ReplicateRequest, ReportRequest, ReportResponse,
    Result, StealRequest, StealResponse,
)
from ..logs import bind_cause
from . import controls
from .peers import PeerError


class LocalRunner(Protocol):
    """What the grid needs of this node's runner to hand it new jobs directly."""

    @property
    def want(self) -> int: ...

    def take(self, leases: list[Lease]) -> None: ...


class JobFlow:
    # ---- submissions ---------------------------------------------------------------------------------
    async def submit(self, specs: list[JobSpec], retry: bool = False) -> tuple[list[str], list[str]]:
        self.require_serving()
        if len({s.id for s in specs}) != len(specs):
            raise ProtocolError("duplicate job ids in one submission", 422)
        if self.counts()["active"] + len(specs) > self.s.max_queued:
            raise Unavailable(f"queue full ({self.s.max_queued} jobs); retry later", 503, retry_after=2.0)
        existing: list[str] = []
        if retry:  # a resubmission: jobs of an earlier attempt may exist anywhere; never make a second one
            v = await self.find([s.id for s in specs])
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

    def _log_jobs(self, event: str, ids: Sequence[str], **kw) -> None:
        """A job transition: one info line for the batch (with its ids), one debug line per job."""
        if not ids:
            return
        self.log.info(event.replace("job_", "jobs_", 1), job_ids=list(ids), **kw)
        for i in ids:
            self.log.debug(event, job_id=i)

    async def _flush_submits(self, groups: list[list[JobSpec]]) -> list[tuple[list[str], list[str]]]:
        self.require_serving()
        now = time.time()
        records = [JobRecord(spec=s, owner=self.id, submitted_at=now,
                             not_before=controls.initial_not_before(s.run_at, s.after)) for g in groups for s in g]
        # an idle local runner takes its jobs in the same transaction (the best queued ones, as its own
        # lease would): no second transaction, no wake-up of the runner loop before the job starts
        runner = self.local_runner
        want = runner.want if runner is not None and self.joined.is_set() else 0
        with self.store.transaction():
            fresh = set(self.store.put_jobs(records))
            leases = self.lease_local(self.id, want) if fresh and want > 0 else []
        if leases and runner is not None:
            runner.take(leases)
        if fresh:
            c = self._counts  # count the new jobs in: a recount scans the whole queue (O(queued) per flush)
            if c["queued"] == 0 and len(fresh) > len(leases):
                self.beat_now.set()  # jobs wait here now: the others' idle runners learn it at once, not in 0.5 s
            self._counts = {**c, "queued": c["queued"] + len(fresh) - len(leases),
                            "leased": c["leased"] + len(leases), "active": c["active"] + len(fresh)}
            # the rows are committed here: a runner may start them while the replicas are written (the ack
            # still waits for them; a job whose replication fails stays queued here either way)
            self.wake_runner.set()
            await self.replicate(ReplicateRequest(sender=self.id, epoch=0,
                                                  jobs=[r for r in records if r.spec.id in fresh]))
            self.metrics.submitted.inc(len(fresh))
        return [([s.id for s in g if s.id in fresh], [s.id for s in g if s.id not in fresh]) for g in groups]

    # ---- leases (local runners and thieves) ----------------------------------------------------------
    def lease_local(self, holder: str, count: int) -> list[Lease]:
        if not self.can_serve():
            return []
        until = time.time() + self.t.lease_ttl
        leases = [Lease(record=r, lease_until=until) for r in self.store.lease(self.id, holder, count, until, time.time())]
        self._log_jobs("job_leased" if holder == self.id else "job_stolen", [le.record.spec.id for le in leases],
                       runner=holder)
        return leases

    def on_steal(self, req: StealRequest) -> StealResponse:
        if self.mem.member(req.runner) is None or not self.can_serve():
            return StealResponse(leases=[])
        leases = self.lease_local(req.runner, req.max_jobs)
        if leases:
            self._counts_at = 0.0
        return StealResponse(leases=leases)

    def on_renew(self, req: RenewRequest) -> ReportResponse:
        if not self.can_serve():
            return ReportResponse(recorded=[], duplicates=[], unknown=list(req.ids))
        ok = self.store.renew(self.id, req.runner, req.ids, time.time() + self.t.lease_ttl)
        lost = [i for i in req.ids if i not in set(ok)]
        return ReportResponse(recorded=ok, duplicates=[], unknown=lost, cancel=self.cancelled_of(lost))

    def cancelled_of(self, ids: list[str]) -> list[str]:
        """Of `ids`, those cancelled on the grid: their runners should kill them."""
        return [i for i, r in self.store.get_results(ids).items() if r.state == "cancelled"] if ids else []

    async def lease_sweeper(self) -> None:
        while not self.stopping:
            await asyncio.sleep(min(0.5, self.t.lease_ttl / 3))
            if not self.can_serve():
                continue
            back = self.store.expire_leases(self.id, time.time())
            if back:
                self.metrics.lease_expired.inc(len(back))
                bind_cause(prefix="sweep-")
                self.event("leases_expired", jobs=len(back))
                self._log_jobs("job_lease_expired", back)
                self.wake_runner.set()
            await controls.expire_results(self)

    # ---- results ----------------------------------------------------------------------------------------
    async def on_report(self, req: ReportRequest) -> ReportResponse:
        return await self.report(req.results)

    async def report(self, results: list[Result]) -> ReportResponse:
        self.require_serving()
        return await self.reports.submit(results)

    async def _flush_reports(self, groups: list[list[Result]]) -> list[ReportResponse]:
        self.require_serving()
        flat = [r for g in groups for r in g]
        jobs = self.store.get_jobs([r.job_id for r in flat])
        to_record: list[Result] = []
        requeue: list[JobRecord] = []
        ttl: dict[str, float | None] = {}
        for r in flat:
            held = jobs.get(r.job_id)
            if held is None or held[0].owner != self.id:
                continue
            rec = held[0]
            again = self._retry_decision(rec, r)
            if again is not None:
                requeue.append(again)
            else:
                ttl[r.job_id] = rec.spec.result_ttl
                r.submitted_at = rec.submitted_at
                r.kind, r.name = rec.spec.kind, rec.spec.name
                to_record.append(r)
        if requeue:
            self.store.requeue(requeue)
            self.metrics.retried.inc(len(requeue))
            await self.replicate(ReplicateRequest(sender=self.id, epoch=0, jobs=requeue))
            self.wake_runner.set()
        recorded, dups, unknown = self.store.record_results(self.id, to_record, ttl)
        self.duplicates_dropped += len(dups)
        self.metrics.duplicates.inc(len(dups))
        if recorded:
            fresh = [r.job_id for r in recorded]
            self.unreplicated.update(fresh)
            try:
                await self.replicate(ReplicateRequest(sender=self.id, epoch=0, results=recorded))
            finally:  # on failure the resync copies them later; until then they are this node's only copy
                self.unreplicated.difference_update(fresh)
            now = time.time()
            for r in recorded:
                (self.metrics.succeeded if r.state == "succeeded" else self.metrics.failed).inc()
                self.done_times.append(now)
            self._notify([r.job_id for r in recorded])
            self._counts_at = 0.0
        rec_ids = {r.job_id for r in recorded}
        requeued = {r.spec.id for r in requeue}
        dup_ids = set(dups)
        out = []
        for g, ctx in zip(groups, self.reports.contexts or [None] * len(groups)):
            if ctx is not None:  # each reporter's lines under its own causal id
                ctx.run(self._log_reports, g, rec_ids, requeued, dup_ids)
            out.append(ReportResponse(
                recorded=[r.job_id for r in g if r.job_id in rec_ids or r.job_id in requeued],
                duplicates=[r.job_id for r in g if r.job_id in dup_ids],
                unknown=[r.job_id for r in g if r.job_id not in rec_ids and r.job_id not in requeued
                         and r.job_id not in dup_ids]))
        return out

    def _log_reports(self, results: list[Result], rec_ids: set[str], requeued: set[str], dup_ids: set[str]) -> None:
        self._log_jobs("job_recorded", [r.job_id for r in results if r.job_id in rec_ids])
        self._log_jobs("job_retried", [r.job_id for r in results if r.job_id in requeued])
        self._log_jobs("job_duplicate_dropped", [r.job_id for r in results if r.job_id in dup_ids])
        self._log_jobs("job_report_unknown", [r.job_id for r in results if r.job_id not in rec_ids
                                              and r.job_id not in requeued and r.job_id not in dup_ids])

    def _retry_decision(self, rec: JobRecord, r: Result) -> JobRecord | None:
        """The job record to queue again, or None to record `r` as the final result."""
        if r.state != "failed":
            return None
        if r.error_type == "WorkerCrashed" or r.retry:
            crashes = rec.crashes + 1
            if crashes < self.s.max_crashes:
                return msgspec.structs.replace(rec, crashes=crashes, state="queued", not_before=0.0)
            r.error = (f"{r.error}; the job killed its worker process {crashes} times, giving up "
                       f"(limit {self.s.max_crashes})")
            r.retry = False
            return None
        spec = rec.spec
        if rec.attempts <= spec.max_retries and (not spec.retry_on or _matches(r.error_type, spec.retry_on)):
            delay = min(60.0, 0.1 * (2 ** (rec.attempts - 1))) * (0.5 + random.random())
            return msgspec.structs.replace(rec, state="queued", not_before=time.time() + delay)
        return None

    async def _report_to(self, owner_id: str, results: list[Result]) -> ReportResponse | None:
        m = self.mem.member(owner_id)
        if m is None:
            d = self.departed.get(owner_id)
            m = self.mem.promoter_for(d.location) if d is not None else None
        if m is None:
            return None
        if m.id == self.id:
            try:
                return await self.report(results)
            except ProtocolError:  # not serving right now (no quorum yet): the caller keeps them and retries
                return None
        try:
            return await self.peers.call(m.ip, m.port, "/peer/report", ReportRequest(runner=self.id, results=results),
                                         ReportResponse, timeout=10.0)
        except (PeerError, ProtocolError):
            return None

    # ---- waiting for results ------------------------------------------------------------------------------
    def _notify(self, ids: Sequence[str]) -> None:
        for i in ids:
            for ev in self.waiters.pop(i, ()):
                ev.set()

    def settled_results(self, ids: list[str]) -> dict[str, Result]:
        """The results of `ids` recorded here with all their copies written."""
        have = self.store.get_results(ids)
        if self.unreplicated:
            have = {k: v for k, v in have.items() if k not in self.unreplicated}
        return have

    async def results_within(self, ids: list[str], seconds: float) -> list[Result]:
        """The settled results of `ids` (jobs this node just accepted) once all are in, or after `seconds`."""
        end = time.monotonic() + seconds
        with self._waiting(ids) as ev:
            while True:
                have = self.settled_results(ids)
                left = end - time.monotonic()
                if len(have) == len(ids) or left <= 0:
                    return list(have.values())
                ev.clear()
                try:
                    await asyncio.wait_for(ev.wait(), timeout=left)
                except TimeoutError:
                    pass

    @contextlib.contextmanager
    def _waiting(self, ids: list[str]) -> Iterator[asyncio.Event]:
        """An event set when a result for any of `ids` is recorded here (or copied here)."""
        ev = asyncio.Event()
        for i in ids:
            self.waiters[i].add(ev)
        try:
            yield ev
        finally:
            for i in ids:
                w = self.waiters.get(i)
                if w is not None:
                    w.discard(ev)
                    if not w:
                        self.waiters.pop(i, None)

    async def wait_results(self, ids: list[str], timeout: float) -> tuple[list[Result], list[str], list[str]]:
        """(results, unknown, undetermined) for `ids`, as soon as one result is known or an id is known not
        to exist, else at the timeout. A job this node holds any copy of is pending; one it does not hold
        is looked up on the ring: *unknown* only when the grid is settled and no member holds it, else
        *undetermined* ("don't know yet": some node that might hold it did not answer), which is waited
        out here and reported only when the timeout comes."""
        end = time.monotonic() + timeout
        looked_at = float("-inf")
        undetermined: list[str] = []
        while True:
            have = self.settled_results(ids)
            if have:
                return list(have.values()), [], []
            here = self.store.known_ids(ids) | set(self.store.get_results(ids))
            missing = [i for i in ids if i not in here]
            now = time.monotonic()
            if missing and now - looked_at >= 0.5:
                looked_at = now
                v = await self.find(missing, {})
                rs = [r for r in v.found.values() if isinstance(r, Result)]
                if rs or v.absent:
                    return rs, list(v.absent), []
                undetermined = list(v.undetermined)
            elif not missing:
                undetermined = []
            left = end - time.monotonic()
            if left <= 0:
                return [], [], undetermined
            with self._waiting(ids) as ev:
                try:  # ids held elsewhere are asked about again (their results are not copied here)
                    await asyncio.wait_for(ev.wait(), timeout=min(left, 0.5 if missing else left))
                    if len(ids) > 1:  # let results of a batch gather: one reply (and one query) for many
                        await asyncio.sleep(0.005 if len(ids) <= 64 else 0.02)
                except TimeoutError:
                    pass

    # ---- cancellation --------------------------------------------------------------------------------------
    async def cancel(self, ids: list[str], forward: bool = True) -> list[str]:
        """Cancel queued and running jobs: the owner records a cancelled result (first wins) and the
        runner holding a lease learns it on its next renew and kills the job's worker."""
        self.require_serving()
        jobs = self.store.get_jobs(ids)
        mine = [rec for rec, state in jobs.values() if rec.owner == self.id and state in ("queued", "leased")]
        elsewhere = [i for i in ids if i not in {r.spec.id for r in mine}]
        forwarded = await self._forward_cancel(elsewhere, jobs) if forward and elsewhere else []
        now = time.time()
        res = [Result(job_id=r.spec.id, state="cancelled", node=self.id,
                      error="cancelled while running" if r.state == "leased" else "cancelled before it ran",
                      attempts=r.attempts, submitted_at=r.submitted_at, finished_at=now, kind=r.spec.kind,
                      name=r.spec.name) for r in mine]
        if not res:
            return forwarded
        recorded, _, _ = self.store.record_results(self.id, res)
        for r in recorded:
            self.log.info("job_cancelled", job_id=r.job_id, error=r.error)
        if recorded:
            self.metrics.cancelled.inc(len(recorded))
            await self.replicate(ReplicateRequest(sender=self.id, epoch=0, results=recorded))
            self._notify([r.job_id for r in recorded])
        return [r.job_id for r in recorded] + forwarded

    async def _forward_cancel(self, ids: list[str], held: dict) -> list[str]:
        """Ask the owners of `ids` (known from our replicas or a lookup) to cancel them."""
        owners: dict[str, list[str]] = defaultdict(list)
        unknown = [i for i in ids if i not in held]
        found = {}
        if unknown and self.mem.peers():
            try:
                found = await self.lookup_everywhere(unknown)
            except GridUnavailable:
                found = {}
        for i in ids:
            rec = held[i][0] if i in held else found.get(i)
            if isinstance(rec, JobRecord) and rec.owner != self.id:
                owners[rec.owner].append(i)
        out: list[str] = []
        for owner, some in owners.items():
            m = self.mem.member(owner)
            if m is None:
                continue
            try:
                got = await self.peers.call(m.ip, m.port, "/jobs/cancel?forwarded=1", CancelRequest(ids=some),
                                            dict, timeout=5.0)
                out += got.get("cancelled", [])
            except (PeerError, ProtocolError):
                pass
        return out


def _matches(error_type: str | None, names: list[str]) -> bool:
    if not error_type:
        return False
    short = error_type.rsplit(".", 1)[-1]
    return any(n == error_type or n == short for n in names)
