"""One server, composed: its shared context, the ring keeper (membership IO), how it starts, replication,
the search for jobs across the ring, result waiters and the job service (the lifecycle's shell).

Each part declares its collaborators in its constructor; this class builds them in dependency order,
wires the few back-references (ring-change listeners, the job service replication promotes into), and
names the handler of every peer message (`PEER_HANDLERS`).
"""

from __future__ import annotations

from ..protocol import (
    HandoffRequest, Heartbeat, JoinAnnounce, LeaveRequest, LockRequest, LookupRequest, RenewRequest, ReplicateRequest,
    ReportRequest, StealRequest, UnlockRequest,
)
from ..settings import NodeSettings
from .context import NodeContext
from .counts import QueueCounts
from .jobs import JobService
from .leaving import Leaving
from .metrics import Metrics
from .orphans import Orphans
from .owners import Owners
from .peers import Peers
from .replication import Replication
from .ring_io import RingKeeper
from .search import Search
from .startup import Startup
from .store import Store
from .waiters import Waiters

# every POST /peer/* message: its type, and which part of the server answers it with which method
PEER_MESSAGES: dict[str, tuple[type, str, str]] = {
    "/peer/heartbeat": (Heartbeat, "keeper", "on_heartbeat"),
    "/peer/ring": (JoinAnnounce, "keeper", "on_ring"),
    "/peer/lock": (LockRequest, "keeper", "on_lock"),
    "/peer/unlock": (UnlockRequest, "keeper", "on_unlock"),
    "/peer/replicate": (ReplicateRequest, "replication", "on_replicate"),
    "/peer/steal": (StealRequest, "jobs", "on_steal"),
    "/peer/report": (ReportRequest, "jobs", "on_report"),
    "/peer/renew": (RenewRequest, "jobs", "on_renew"),
    "/peer/handoff": (HandoffRequest, "replication", "on_handoff"),
    "/peer/lookup": (LookupRequest, "search", "on_lookup"),
    "/peer/leave": (LeaveRequest, "leaving", "on_leave"),
}


class Grid:
    def __init__(self, settings: NodeSettings, peers: Peers, metrics: Metrics | None = None) -> None:
        assert settings.data_dir is not None
        store = Store(settings.data_dir / "jobgrid.sqlite3")
        self.ctx = ctx = NodeContext(settings, peers, metrics or Metrics(), store)
        self.counts = QueueCounts(store, ctx.id, ctx.metrics)
        self.keeper = RingKeeper(ctx, self.counts)
        self.startup = Startup(ctx, self.keeper, self.counts)
        self.replication = Replication(ctx, self.keeper)
        self.search = Search(ctx, self.keeper.can_serve)
        self.waiters = Waiters(store, self.search)
        self.jobs = JobService(ctx, self.keeper, self.replication, self.search, self.waiters, self.counts)
        self.owners = Owners(ctx, self.jobs)
        self.jobs.report_to = self.owners.report
        self.orphans = Orphans(ctx, self.replication, self.jobs)
        self.replication.reconcile = self.orphans.reconcile
        self.leaving = Leaving(ctx, self.keeper, self.replication, self.startup)
        for _typ, part, method in PEER_MESSAGES.values():
            self.handler(part, method)  # a table entry no part answers fails at start, not on first use

    # the few views the HTTP shell and the dashboard read
    @property
    def id(self) -> str:
        return self.ctx.id

    @property
    def s(self) -> NodeSettings:
        return self.ctx.s

    @property
    def mem(self):  # noqa: ANN201 - Membership
        return self.ctx.mem

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    def handler(self, part: str, method: str):  # noqa: ANN201 - a bound method
        return getattr(getattr(self, part), method)

    async def start(self) -> None:
        """Background work, then into the ring (the resync loop first: joining asks for a resync)."""
        ctx = self.ctx
        ctx.spawn(self.replication.resync_loop(), "resync")
        await self.startup.start()
        ctx.spawn(self.keeper.heartbeat_loop(), "heartbeat")
        ctx.spawn(self.jobs.sweeper(), "lease-sweeper")
        ctx.spawn(self.jobs.dependency_loop(), "dependencies")

    async def close(self) -> None:
        await self.ctx.close()
        self.waiters.wake_all()
        self.ctx.store.close()
