"""The owner of a job, as the runner sees it: one interface whether the owner is this node (calls into
the job service) or a peer (messages over the peer transport). `Owners.of` also follows a departed
owner to the node that covers its position now, so a result finds whoever holds the job.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import ProtocolError
from ..protocol import (
    Lease, Member, RenewRequest, ReportRequest, ReportResponse, Result, StealRequest, StealResponse,
)
from .context import NodeContext
from .jobs import JobService
from .peers import PeerError


class Owner(Protocol):
    id: str
    local: bool

    async def lease(self, count: int) -> list[Lease]: ...
    async def renew(self, ids: list[str]) -> ReportResponse | None: ...
    async def report(self, results: list[Result]) -> ReportResponse | None: ...


class LocalOwner:
    """This node's own job service."""

    local = True

    def __init__(self, ctx: NodeContext, jobs: JobService) -> None:
        self.ctx = ctx
        self.jobs = jobs

    @property
    def id(self) -> str:
        return self.ctx.id

    async def lease(self, count: int) -> list[Lease]:
        return self.jobs.lease(self.ctx.id, count)

    async def renew(self, ids: list[str]) -> ReportResponse | None:
        return self.jobs.on_renew(RenewRequest(runner=self.ctx.id, ids=ids))

    async def report(self, results: list[Result]) -> ReportResponse | None:
        try:
            return await self.jobs.report(results)
        except ProtocolError:  # not serving right now (no quorum yet): the caller keeps them and retries
            return None


class RemoteOwner:
    """A peer: steal from it, renew and report to it."""

    local = False

    def __init__(self, ctx: NodeContext, member: Member) -> None:
        self.ctx = ctx
        self.member = member
        self.id = member.id

    async def _call(self, path: str, body: object, reply: type) -> object:
        return await self.ctx.peers.call(self.member.ip, self.member.port, path, body, reply)

    async def lease(self, count: int) -> list[Lease]:
        req = StealRequest(runner=self.ctx.id, epoch=self.ctx.mem.ring.epoch, max_jobs=count)
        resp = await self._call("/peer/steal", req, StealResponse)
        return resp.leases  # type: ignore[attr-defined]

    async def renew(self, ids: list[str]) -> ReportResponse | None:
        try:
            return await self._call("/peer/renew", RenewRequest(runner=self.ctx.id, ids=ids),
                                    ReportResponse)  # type: ignore[return-value]
        except (PeerError, ProtocolError):  # the owner may be gone: its lease will lapse
            return None

    async def report(self, results: list[Result]) -> ReportResponse | None:
        try:
            return await self._call("/peer/report", ReportRequest(runner=self.ctx.id, results=results),
                                    ReportResponse)  # type: ignore[return-value]
        except (PeerError, ProtocolError):
            return None


class Owners:
    def __init__(self, ctx: NodeContext, jobs: JobService) -> None:
        self.ctx = ctx
        self.local = LocalOwner(ctx, jobs)

    def of(self, owner_id: str) -> Owner | None:
        """The owner of jobs owned by `owner_id`: itself while it is a member, else whoever covers its
        position now (None: nobody known)."""
        mem = self.ctx.mem
        m = mem.member(owner_id)
        if m is None:
            d = self.ctx.departed.get(owner_id)
            m = mem.promoter_for(d.location) if d is not None else None
        if m is None:
            return None
        if m.id == self.ctx.id:
            return self.local if mem.is_member else None
        return RemoteOwner(self.ctx, m)

    def member(self, m: Member) -> Owner:
        return self.local if m.id == self.ctx.id else RemoteOwner(self.ctx, m)

    async def report(self, owner_id: str, results: list[Result]) -> ReportResponse | None:
        o = self.of(owner_id)
        return await o.report(results) if o is not None else None
