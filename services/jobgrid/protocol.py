"""Every message on the wire, as msgspec Structs: validated on decode, one schema for JSON and msgpack.

Clients may speak JSON (`application/json`, bytes as base64) or msgpack
(`application/msgpack`); answers use the request's format. Pickled payloads are
`bytes` here and are never loaded by a server process.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

MAX_EPOCH = 1 << 53  # ring epochs grow by one per change: far beyond any grid's life, far below overflow
MAX_RUN_AT = 4_102_444_800.0  # 2100-01-01 on the wire; a node takes at most RUN_AT_HORIZON ahead of its clock
RUN_AT_HORIZON = 10 * 365 * 86400.0

JobId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$",
                                    description="1-128 chars: letters, digits, _ . : -")]
NodeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
Position = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Epoch = Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCH)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=10 * 365 * 86400)]
Payload = Annotated[bytes, msgspec.Meta(max_length=64 * 1024 * 1024)]
Text = Annotated[str, msgspec.Meta(max_length=16 * 1024 * 1024)]
Target = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", max_length=256)]
Priority = Annotated[int, msgspec.Meta(ge=-1_000_000, le=1_000_000)]
Retries = Annotated[int, msgspec.Meta(ge=0, le=100)]

JobKind = Literal["pickle", "script", "call"]
JobState = Literal["waiting", "queued", "leased", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

MAX_BATCH = 10_000


class JobSpec(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What a client submits. `payload` is cloudpickle bytes of (fn, args, kwargs) for kind pickle."""

    id: JobId
    kind: JobKind
    payload: Payload | None = None
    source: Text | None = None
    argv: Annotated[list[Annotated[str, msgspec.Meta(max_length=65536)]], msgspec.Meta(max_length=4096)] = []
    target: Target | None = None
    args: Annotated[list[Any], msgspec.Meta(max_length=100_000)] = []
    kwargs: dict[str, Any] = {}
    name: Annotated[str, msgspec.Meta(max_length=256)] = ""
    priority: Priority = 0
    timeout: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] | None = None
    max_retries: Retries = 0
    retry_on: Annotated[list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=64)] = []
    run_at: Annotated[float, msgspec.Meta(ge=0, le=MAX_RUN_AT)] | None = None  # epoch seconds (a time, not a duration)
    after: Annotated[list[JobId], msgspec.Meta(max_length=1000)] = []
    result_ttl: Seconds | None = None


class JobRecord(msgspec.Struct, omit_defaults=True):
    """A job as a server stores and replicates it."""

    spec: JobSpec
    owner: NodeId
    state: JobState = "queued"
    attempts: Count = 0
    crashes: Count = 0
    submitted_at: float = 0.0
    not_before: float = 0.0
    cancel_requested: bool = False
    # leased to another node's runner (a steal): copies keep it, so a promoted job that is still running
    # there is not run a second time by the node that promotes it
    holder: NodeId | None = None
    lease_until: float | None = None


class Result(msgspec.Struct, omit_defaults=True):
    """The outcome of one job, recorded once by its owner."""

    job_id: JobId
    state: Literal["succeeded", "failed", "cancelled"]
    value: Payload | None = None
    value_format: Literal["pickle", "json", "none"] = "none"
    error: Text | None = None
    error_type: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    traceback: Text | None = None
    stdout: Text = ""
    stderr: Text = ""
    exit_code: int | None = None
    node: Annotated[str, msgspec.Meta(max_length=64)] = ""
    attempts: Count = 0
    submitted_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    retry: bool = False
    expires_at: float | None = None  # result_ttl: when owner and replicas forget it
    kind: Annotated[str, msgspec.Meta(max_length=32)] = ""  # copied from the spec when the owner records it
    name: Annotated[str, msgspec.Meta(max_length=256)] = ""


# ---- client API -------------------------------------------------------------------------------

class SubmitRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    jobs: Annotated[list[JobSpec], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]
    retry: bool = False  # a resubmission: the node first asks the grid whether the ids exist
    # after the ack is due, wait up to this long (s) for the results of the accepted jobs and send them
    # with it: a short job's round trip then needs no wait request
    linger: Annotated[float, msgspec.Meta(ge=0, le=0.05)] = 0.0


class SubmitResponse(msgspec.Struct):
    accepted: list[str]
    existing: list[str]
    node: str
    results: list[Result] = []  # results of accepted jobs that finished within the linger


class WaitRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[JobId], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]
    timeout: Annotated[float, msgspec.Meta(ge=0, le=60)] = 10.0


class WaitResponse(msgspec.Struct):
    results: list[Result]
    unknown: list[str]  # no member of a settled grid holds these ids: JobNotFound
    # not known yet: some node that might hold them did not answer (a failover is under way); keep waiting.
    # Older clients ignore it and see these ids as still pending, which is what they are to them.
    undetermined: list[str] = []


class JobStatus(msgspec.Struct):
    id: str
    state: str
    owner: str
    attempts: int
    kind: str
    name: str = ""
    priority: int = 0
    submitted_at: float = 0.0


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[JobId], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class ServerEntry(msgspec.Struct):
    """One line of the seed's server list."""

    id: NodeId
    location: Position
    ip: Host
    port: Port
    active: Count = 0
    backup: Count = 0
    timestamp: float = 0.0
    status: Literal["alive", "suspect", "dead"] = "alive"


class ServerList(msgspec.Struct):
    epoch: Epoch
    me: str
    servers: list[ServerEntry]
    serving: bool = True  # false: the answering node takes no work now, `reason` says why
    reason: str = ""
    replicas: int = 0  # copies of every job the grid keeps


# ---- peer protocol ----------------------------------------------------------------------------

class Member(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: NodeId
    location: Position
    ip: Host
    port: Port


class RingState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The agreed ring: members and an epoch that grows on every change (fencing)."""

    epoch: Epoch
    members: Annotated[list[Member], msgspec.Meta(max_length=4096)]
    proposer: Annotated[str, msgspec.Meta(max_length=64)] = ""
    # copies of every job the grid keeps (R): chosen by its first node, adopted by every joiner; 0 in a
    # ring saved before R was part of it (then the node's setting, or 3)
    replicas: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0

    def key(self) -> tuple[int, str]:
        return (self.epoch, self.proposer)


class LockRequest(msgspec.Struct, forbid_unknown_fields=True):
    holder: NodeId
    ttl: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0


class LeaveRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A member leaving gracefully asks another to propose the ring without it (leave.py)."""

    sender: NodeId
    epoch: Epoch


class LockResponse(msgspec.Struct):
    granted: bool
    holder: str | None
    ring: RingState


class JoinAnnounce(msgspec.Struct, forbid_unknown_fields=True):
    ring: RingState
    sender: NodeId | None = None  # the node sending it (the joiner, the leader, or a member passing it on)


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True):
    sender: NodeId
    epoch: Epoch
    active: Count
    backup: Count = 0
    sent_at: float = 0.0


class HeartbeatReply(msgspec.Struct):
    epoch: Epoch
    active: Count
    member: bool
    ring: RingState | None = None


class ReplicateRequest(msgspec.Struct, forbid_unknown_fields=True):
    sender: NodeId
    epoch: Epoch
    jobs: Annotated[list[JobRecord], msgspec.Meta(max_length=MAX_BATCH)] = []
    results: Annotated[list[Result], msgspec.Meta(max_length=MAX_BATCH)] = []
    drop: Annotated[list[JobId], msgspec.Meta(max_length=MAX_BATCH)] = []
    prune_all: bool = False  # forget every replica of the sender: this node is no longer its successor
    leases: Annotated[list[LeaseNote], msgspec.Meta(max_length=MAX_BATCH)] = []  # jobs stolen by other runners


class LeaseNote(msgspec.Struct, array_like=True):
    """A job of the sender leased to another node's runner, until (epoch seconds)."""

    id: JobId
    holder: NodeId
    until: float


class Lease(msgspec.Struct):
    record: JobRecord
    lease_until: float


class StealRequest(msgspec.Struct, forbid_unknown_fields=True):
    runner: NodeId
    epoch: Epoch
    max_jobs: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


class StealResponse(msgspec.Struct):
    leases: list[Lease]


class ReportRequest(msgspec.Struct, forbid_unknown_fields=True):
    runner: NodeId
    results: Annotated[list[Result], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class ReportResponse(msgspec.Struct):
    recorded: list[str]
    duplicates: list[str]
    unknown: list[str]
    cancel: list[str] = []  # renew replies: jobs cancelled on the grid, to be killed by their runner


class RenewRequest(msgspec.Struct, forbid_unknown_fields=True):
    runner: NodeId
    ids: Annotated[list[JobId], msgspec.Meta(max_length=MAX_BATCH)]


class HandoffRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Jobs (and results) of a dead owner, sent to the node that now covers it."""

    sender: NodeId
    epoch: Epoch
    dead: NodeId
    jobs: Annotated[list[JobRecord], msgspec.Meta(max_length=MAX_BATCH)] = []
    results: Annotated[list[Result], msgspec.Meta(max_length=MAX_BATCH)] = []


class LookupRequest(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[JobId], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class LookupResponse(msgspec.Struct):
    results: list[Result]
    jobs: list[JobRecord]
    pending: list[str] = []  # ids with a result recorded there whose copies are still being written
    orphaned: list[str] = []  # ids held there only under an owner that is no member of its ring


class RecoveryState(msgspec.Struct):
    """GET /peer/recovery: what a node restarting after an outage asks the members of its saved ring."""

    node: str
    live: bool                     # a member of a running grid (then `ring` is that grid's ring)
    ring: RingState
    saved: RingState | None = None  # the ring it had agreed to before it (re)started


class UnlockRequest(msgspec.Struct, forbid_unknown_fields=True):
    holder: NodeId


class ErrorBody(msgspec.Struct):
    error: str
