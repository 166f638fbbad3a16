"""A job's life on its owner as a pure state machine: events in, instructions out.

    submitted ─► WAITING ─(dependencies succeeded)─► QUEUED ─(leased | stolen)─► LEASED ─(reported)─► final
       │            └─(a dependency did not succeed)──────────────────────────────────────────────► FAILED
       └─► QUEUED (no dependencies; leasable from run_at on)          ▲           │
                                                                      └───────────┘
                                    lease lapsed | released unstarted | reported with a retry left
    cancel asked:   WAITING | QUEUED | LEASED ─► CANCELLED (a runner holding the lease learns it when it renews)
    owner changed:  the jobs of a departed owner become the new owner's (WAITING stays WAITING, else QUEUED)
    result expired: a final result is forgotten by its owner and its replicas

The final states (SUCCEEDED, FAILED, CANCELLED) live as result records, and every one of them, whatever
led to it, leaves through the one `Finish` instruction: recorded once (first wins), copied to the
replicas, then handed out and counted. No IO and no clock here: each event carries `now` and its causal
id, the shell (`jobs.py`) loads the records an event needs, calls `handle` and carries out the
instructions in order (as dask's `WorkerState.handle_stimulus` and our `Membership.adopt`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import singledispatchmethod

import msgspec

from ..protocol import RUN_AT_HORIZON, JobRecord, JobSpec, Result

MAX_DELAY = RUN_AT_HORIZON  # run_at may lie at most this far ahead (s)
MAX_RETRY_DELAY = 60.0


class JobState(enum.StrEnum):
    WAITING = "waiting"      # some `after` dependency has no result yet: never leased
    QUEUED = "queued"        # leasable from `not_before` on
    LEASED = "leased"        # a runner holds it until `lease_until`
    SUCCEEDED = "succeeded"  # final states: a result record, no job row
    FAILED = "failed"
    CANCELLED = "cancelled"


LIVE = frozenset({JobState.WAITING, JobState.QUEUED, JobState.LEASED})


@dataclass(frozen=True, kw_only=True)
class Policy:
    """The owner's rules for a job's life (from the node's settings)."""

    lease_ttl: float = 3.0
    max_crashes: int = 3


# ---- events --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Event:
    cause: str
    now: float


@dataclass(frozen=True, kw_only=True)
class Submitted(Event):
    owner: str
    specs: Sequence[JobSpec]


@dataclass(frozen=True, kw_only=True)
class LeaseAsked(Event):
    """A runner wants up to `count` jobs: this node's own (`holder == owner`) or a thief's (stolen)."""

    owner: str
    holder: str
    count: int
    serving: bool          # this node is a member with quorum
    holder_known: bool     # the holder is a member of the ring


@dataclass(frozen=True, kw_only=True)
class RenewAsked(Event):
    holder: str
    ids: Sequence[str]
    serving: bool


@dataclass(frozen=True, kw_only=True)
class Reported(Event):
    """Runs finished. `held`: the job rows this node holds for them (any owner)."""

    owner: str
    results: Sequence[Result]
    held: Mapping[str, JobRecord]


@dataclass(frozen=True, kw_only=True)
class LeasesLapsed(Event):
    """A sweep: leases past their time, held by runners that left the ring (`holders`), or held by any
    runner outside `members` (after a ring change or an adoption)."""

    holders: Sequence[str] = ()
    members: Sequence[str] | None = None


@dataclass(frozen=True, kw_only=True)
class Released(Event):
    """A runner gives back prefetched jobs it never started."""

    holder: str
    ids: Sequence[str]


@dataclass(frozen=True, kw_only=True)
class CancelAsked(Event):
    owner: str
    ids: Sequence[str]
    held: Mapping[str, JobRecord]   # rows held here (owned or replicas) for `ids`


@dataclass(frozen=True, kw_only=True)
class DependenciesSettled(Event):
    """WAITING jobs and the results known so far for their dependencies (job id -> result)."""

    owner: str
    waiting: Sequence[JobRecord]
    results: Mapping[str, Result]


@dataclass(frozen=True, kw_only=True)
class OwnerChanged(Event):
    """The rows of `old` (all, or `ids`) are this node's now: promotion, handoff or orphan adoption."""

    old: str
    new: str
    ids: Sequence[str] | None = None


@dataclass(frozen=True, kw_only=True)
class ResultsExpired(Event):
    ids: Sequence[str]


# ---- instructions --------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Instruction:
    cause: str


@dataclass(frozen=True, kw_only=True)
class Store(Instruction):
    """Insert the jobs not known yet, copy the new ones to the replicas, then acknowledge them."""

    records: list[JobRecord]


@dataclass(frozen=True, kw_only=True)
class Lease(Instruction):
    holder: str
    count: int
    until: float
    stolen: bool


@dataclass(frozen=True, kw_only=True)
class Renew(Instruction):
    holder: str
    ids: list[str]
    until: float


@dataclass(frozen=True, kw_only=True)
class Requeue(Instruction):
    """Back to the queue with these records (attempts, crashes, delays), copied to the replicas."""

    records: list[JobRecord]
    reason: str


@dataclass(frozen=True, kw_only=True)
class Finish(Instruction):
    """Final results: recorded once, copied to the replicas, only then handed out and counted."""

    results: list[Result]
    ttl: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ExpireLeases(Instruction):
    before: float
    holders: list[str] | None = None
    members: list[str] | None = None  # expire every lease held outside these (then `before` is not used)


@dataclass(frozen=True, kw_only=True)
class ReleaseLeases(Instruction):
    holder: str
    ids: list[str]


@dataclass(frozen=True, kw_only=True)
class Adopt(Instruction):
    old: str
    new: str
    ids: list[str] | None


@dataclass(frozen=True, kw_only=True)
class Forward(Instruction):
    """Ask the owner of jobs held here only as replicas to cancel them."""

    owner: str
    ids: list[str]


@dataclass(frozen=True, kw_only=True)
class Unknown(Instruction):
    """Reported or cancelled ids this node does not own: the caller must look elsewhere."""

    ids: list[str]


@dataclass(frozen=True, kw_only=True)
class DropResults(Instruction):
    ids: list[str]


# ---- the machine ---------------------------------------------------------------------------------------
def initial(spec: JobSpec, owner: str, now: float) -> JobRecord:
    """A new job's record: WAITING while it has dependencies, else QUEUED from `run_at` on."""
    if spec.run_at is not None and spec.run_at > now + MAX_DELAY:
        raise ValueError(f"run_at lies more than {MAX_DELAY / 86400 / 365:.0f} years ahead")
    state = JobState.WAITING if spec.after else JobState.QUEUED
    return JobRecord(spec=spec, owner=owner, state=state.value, submitted_at=now, not_before=spec.run_at or 0.0)


class Lifecycle:
    """Decides every change of a job's state on its owner. `handle(event) -> [Instruction, ...]`."""

    def __init__(self, policy: Policy, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.rand = rand  # retry back-off jitter (seeded in tests)

    @singledispatchmethod
    def handle(self, event: Event) -> list[Instruction]:
        raise TypeError(f"no transition for {type(event).__name__}")

    @handle.register
    def _(self, ev: Submitted) -> list[Instruction]:
        return [Store(cause=ev.cause, records=[initial(s, ev.owner, ev.now) for s in ev.specs])]

    @handle.register
    def _(self, ev: LeaseAsked) -> list[Instruction]:
        if not ev.serving or not ev.holder_known or ev.count <= 0:
            return []
        return [Lease(cause=ev.cause, holder=ev.holder, count=ev.count, until=ev.now + self.policy.lease_ttl,
                      stolen=ev.holder != ev.owner)]

    @handle.register
    def _(self, ev: RenewAsked) -> list[Instruction]:
        if not ev.serving or not ev.ids:
            return []
        return [Renew(cause=ev.cause, holder=ev.holder, ids=list(ev.ids), until=ev.now + self.policy.lease_ttl)]

    @handle.register
    def _(self, ev: Reported) -> list[Instruction]:
        finish: list[Result] = []
        ttl: dict[str, float | None] = {}
        retry: list[JobRecord] = []
        unknown: list[str] = []
        for r in ev.results:
            rec = ev.held.get(r.job_id)
            if rec is None or rec.owner != ev.owner:
                unknown.append(r.job_id)
                continue
            again, r = self.retry(rec, r, ev.now)
            if again is not None:
                retry.append(again)
                continue
            ttl[r.job_id] = rec.spec.result_ttl
            finish.append(msgspec.structs.replace(r, submitted_at=rec.submitted_at, kind=rec.spec.kind,
                                                  name=rec.spec.name))
        out: list[Instruction] = []
        if retry:
            out.append(Requeue(cause=ev.cause, records=retry, reason="retry"))
        if finish:
            out.append(Finish(cause=ev.cause, results=finish, ttl=ttl))
        if unknown:
            out.append(Unknown(cause=ev.cause, ids=unknown))
        return out

    def retry(self, rec: JobRecord, r: Result, now: float) -> tuple[JobRecord | None, Result]:
        """(the record to queue again, None when final; the result, with the crash limit named if it hit it)."""
        if r.state != JobState.FAILED:
            return None, r
        if r.error_type == "WorkerCrashed" or r.retry:
            crashes = rec.crashes + 1
            if crashes < self.policy.max_crashes:
                return msgspec.structs.replace(rec, crashes=crashes, state=JobState.QUEUED.value, not_before=0.0), r
            return None, msgspec.structs.replace(
                r, retry=False, error=f"{r.error}; the job killed its worker process {crashes} times, giving up "
                                      f"(limit {self.policy.max_crashes})")
        spec = rec.spec
        if rec.attempts <= spec.max_retries and (not spec.retry_on or _matches(r.error_type, spec.retry_on)):
            delay = min(MAX_RETRY_DELAY, 0.1 * (2 ** (rec.attempts - 1))) * (0.5 + self.rand())
            return msgspec.structs.replace(rec, state=JobState.QUEUED.value, not_before=now + delay), r
        return None, r

    @handle.register
    def _(self, ev: LeasesLapsed) -> list[Instruction]:
        if ev.members is not None:
            return [ExpireLeases(cause=ev.cause, before=ev.now, members=sorted(ev.members))]
        return [ExpireLeases(cause=ev.cause, before=ev.now, holders=list(ev.holders) if ev.holders else None)]

    @handle.register
    def _(self, ev: Released) -> list[Instruction]:
        return [ReleaseLeases(cause=ev.cause, holder=ev.holder, ids=list(ev.ids))] if ev.ids else []

    @handle.register
    def _(self, ev: CancelAsked) -> list[Instruction]:
        finish: list[Result] = []
        elsewhere: dict[str, list[str]] = {}
        unknown: list[str] = []
        for i in ev.ids:
            rec = ev.held.get(i)
            if rec is None:
                unknown.append(i)
            elif rec.owner != ev.owner:
                elsewhere.setdefault(rec.owner, []).append(i)
            elif rec.state in LIVE:
                running = rec.state == JobState.LEASED
                finish.append(Result(job_id=i, state=JobState.CANCELLED.value, node=ev.owner,
                                     error="cancelled while running" if running else "cancelled before it ran",
                                     attempts=rec.attempts, submitted_at=rec.submitted_at, finished_at=ev.now,
                                     kind=rec.spec.kind, name=rec.spec.name))
        out: list[Instruction] = []
        if finish:
            out.append(Finish(cause=ev.cause, results=finish,
                              ttl={r.job_id: ev.held[r.job_id].spec.result_ttl for r in finish}))
        out += [Forward(cause=ev.cause, owner=o, ids=ids) for o, ids in elsewhere.items()]
        if unknown:
            out.append(Unknown(cause=ev.cause, ids=unknown))
        return out

    @handle.register
    def _(self, ev: DependenciesSettled) -> list[Instruction]:
        release: list[JobRecord] = []
        failed: list[Result] = []
        for rec in ev.waiting:
            if rec.owner != ev.owner or rec.state != JobState.WAITING:
                continue
            verdict, dep = dependency_verdict(rec.spec.after, ev.results)
            if verdict == "ready":
                release.append(msgspec.structs.replace(rec, state=JobState.QUEUED.value,
                                                       not_before=rec.spec.run_at or 0.0))
            elif verdict == "fail":
                failed.append(Result(job_id=rec.spec.id, state=JobState.FAILED.value, error_type="DependencyFailed",
                                     error=f"dependency {dep} did not succeed ({ev.results[dep].state})",
                                     node=ev.owner, attempts=rec.attempts, submitted_at=rec.submitted_at,
                                     finished_at=ev.now, kind=rec.spec.kind, name=rec.spec.name))
        out: list[Instruction] = []
        if release:
            out.append(Requeue(cause=ev.cause, records=release, reason="dependencies_met"))
        if failed:
            ttl = {r.spec.id: r.spec.result_ttl for r in ev.waiting}
            out.append(Finish(cause=ev.cause, results=failed, ttl={r.job_id: ttl[r.job_id] for r in failed}))
        return out

    @handle.register
    def _(self, ev: OwnerChanged) -> list[Instruction]:
        if ev.old == ev.new or (ev.ids is not None and not ev.ids):
            return []
        return [Adopt(cause=ev.cause, old=ev.old, new=ev.new, ids=None if ev.ids is None else list(ev.ids))]

    @handle.register
    def _(self, ev: ResultsExpired) -> list[Instruction]:
        return [DropResults(cause=ev.cause, ids=list(ev.ids))] if ev.ids else []


def copy_replaces(*, held_owner: str, incoming_owner: str, me: str, members: frozenset[str]) -> bool:
    """Whether a copy of a job's final result, sent under `incoming_owner`, replaces the record this node
    holds under `held_owner`. A record this node owns is never replaced (first wins). The record of a
    member of the ring is the grid's: a copy under an owner that is no member (a node the grid removed,
    e.g. the minority side of a partition that ran the job again in the failure-detection window) never
    replaces it, so each job keeps one record. A member's copy replaces a departed owner's (an orphan) or
    an older copy of its own."""
    if held_owner == me:
        return False
    return incoming_owner in members or held_owner not in members


def second_runs(ours: Mapping[str, Result], grids: Mapping[str, object]) -> list[str]:
    """Ids whose result held here (`ours`, an orphan's) is another run than the record the grid holds
    (`grids`: what a member answered): the member's record stands, ours is a second run, dropped and
    counted as a duplicate. The same record reached by two paths is no second run."""
    return [i for i, r in ours.items() if isinstance(g := grids.get(i), Result)
            and (r.node, r.finished_at) != (g.node, g.finished_at)]


def dependency_verdict(after: Sequence[str], results: Mapping[str, Result]) -> tuple[str, str | None]:
    """("ready" | "wait" | "fail", the failing dependency)."""
    for dep in after:
        r = results.get(dep)
        if r is not None and r.state != JobState.SUCCEEDED:
            return "fail", dep
    if all(d in results for d in after):
        return "ready", None
    return "wait", None


def _matches(error_type: str | None, names: Sequence[str]) -> bool:
    if not error_type:
        return False
    short = error_type.rsplit(".", 1)[-1]
    return any(n == error_type or n == short for n in names)
