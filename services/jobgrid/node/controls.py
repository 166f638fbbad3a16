"""Job controls that need the owner's attention after submission: dependencies, cancellation of
running jobs, result expiry. Pure helpers plus one small loop; the Grid calls them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from ..errors import JobgridError
from ..protocol import MAX_RUN_AT, JobRecord, ReplicateRequest, Result

# not_before of a job whose `after` dependencies have not all succeeded yet: never leased until then
WAITING = 9.0e15
assert WAITING > MAX_RUN_AT  # a user's run_at (bounded by the protocol) can never look like this sentinel
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(JobRecord)


def initial_not_before(run_at: float | None, after: list[str]) -> float:
    if after:
        return WAITING
    return run_at or 0.0


def dependency_verdict(after: list[str], results: dict[str, Any]) -> tuple[str, str | None]:
    """("ready"|"wait"|"fail", failing dependency). `results` maps job id -> Result (or absent)."""
    for dep in after:
        r = results.get(dep)
        if isinstance(r, Result) and r.state != "succeeded":
            return "fail", dep
    if all(isinstance(results.get(d), Result) for d in after):
        return "ready", None
    return "wait", None


def waiting_jobs(grid: Any, limit: int = 500) -> list[JobRecord]:
    rows = grid.store.db.execute("SELECT record FROM jobs WHERE owner=? AND state='queued' AND not_before>=? "
                                 "LIMIT ?", (grid.id, WAITING, limit)).fetchall()
    return [_dec.decode(b) for (b,) in rows]


async def check_dependencies(grid: Any) -> int:
    """Release jobs whose dependencies all succeeded; fail those with a failed dependency."""
    waiting = waiting_jobs(grid)
    if not waiting:
        return 0
    deps = sorted({d for rec in waiting for d in rec.spec.after})
    found: dict[str, Any] = dict(grid.store.get_results(deps))
    missing = [d for d in deps if d not in found]
    if missing and grid.mem.peers():
        try:
            found.update({k: v for k, v in (await grid.lookup_everywhere(missing)).items() if isinstance(v, Result)})
        except JobgridError:
            pass
    release: list[JobRecord] = []
    failed: list[Result] = []
    now = time.time()
    for rec in waiting:
        verdict, dep = dependency_verdict(rec.spec.after, found)
        if verdict == "ready":
            release.append(msgspec.structs.replace(rec, state="queued", not_before=rec.spec.run_at or 0.0))
        elif verdict == "fail":
            failed.append(Result(job_id=rec.spec.id, state="failed", error_type="DependencyFailed",
                                 error=f"dependency {dep} did not succeed ({found[dep].state})", node=grid.id,
                                 attempts=rec.attempts, submitted_at=rec.submitted_at, finished_at=now,
                                 kind=rec.spec.kind, name=rec.spec.name))
    if release:
        grid.store.requeue(release)
        await grid.replicate(ReplicateRequest(sender=grid.id, epoch=0, jobs=release))
        grid.log.info("dependencies_met", job_ids=[r.spec.id for r in release])
        grid.wake_runner.set()
    if failed:
        recorded, _, _ = grid.store.record_results(grid.id, failed)
        if recorded:
            grid.metrics.failed.inc(len(recorded))
            await grid.replicate(ReplicateRequest(sender=grid.id, epoch=0, results=recorded))
            grid._notify([r.job_id for r in recorded])
            for r in recorded:
                grid.log.info("dependency_failed", job_id=r.job_id, error=r.error)
    return len(release) + len(failed)


async def expire_results(grid: Any) -> int:
    """Drop this owner's results past their result_ttl, here and on its replicas."""
    now = time.time()
    ids = [i for (i,) in grid.store.db.execute(
        "SELECT job_id FROM results WHERE owner=? AND expires_at IS NOT NULL AND expires_at<?", (grid.id, now))]
    grid.store.expire_results(now)
    if ids:
        await grid.replicate(ReplicateRequest(sender=grid.id, epoch=0, drop=ids))
        grid.log.info("results_expired", job_ids=ids[:100], count=len(ids))
    return len(ids)


async def dependency_loop(grid: Any, interval: float = 0.3) -> None:
    while not grid.stopping:
        await asyncio.sleep(interval)
        if not grid.can_serve():
            continue
        try:
            await check_dependencies(grid)
        except JobgridError as e:
            grid.log.warning("dependency_check_failed", error=str(e))
