"""Orphans: rows whose owner is in no ring this node follows any more (a departed member whose copies
landed here late or outlived a restart, or this node's own former incarnation after it was removed).

`plan` (pure) decides per owner: hand them to the node that covers the departed owner's position now, or,
where that is this node (or the position is unknown), check them here. A check takes only what no member
of the ring has (`JobService.adopt_unowned`): one node per departed position decides, so two holders of
orphan copies never both drop them (a lost job) nor both adopt them (a job with two owners). Until then,
orphan copies are never handed out to clients (`Search.held_here`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..membership import Membership
from ..protocol import Member
from .context import NodeContext
from .replication import Owning, Replication


@dataclass(frozen=True)
class Step:
    owner: str
    action: Literal["check", "handoff"]
    to: Member | None = None  # handoff: the node that covers the departed owner now


def plan(owners: Iterable[str], mem: Membership, me: str, departed: Mapping[str, Member]) -> list[Step]:
    members = mem.member_ids
    out: list[Step] = []
    for owner in sorted(owners):
        if owner in members or owner == me:
            continue
        dead = departed.get(owner)
        p = mem.promoter_for(dead.location) if dead is not None else None
        if p is None or p.id == me:
            out.append(Step(owner, "check"))
        else:
            out.append(Step(owner, "handoff", p))
    return out


class Orphans:
    def __init__(self, ctx: NodeContext, replication: Replication, owning: Owning) -> None:
        self.ctx = ctx
        self.replication = replication
        self.owning = owning

    async def reconcile(self) -> None:
        ctx = self.ctx
        for step in plan(ctx.store.owners(), ctx.mem, ctx.id, ctx.departed):
            if step.action == "handoff":
                assert step.to is not None
                await self.replication.handoff(ctx.departed[step.owner], step.to)
                continue
            while True:
                ids = [j.spec.id for j in ctx.store.jobs_of(step.owner, limit=1000)] + [
                    r.job_id for r in ctx.store.results_of(step.owner, limit=1000)]
                if not ids:
                    break
                _, undecided = await self.owning.adopt_unowned(step.owner, ids)
                if undecided:  # cannot tell yet: keep them (not handed out) and try again on the next resync
                    ctx.signals.resync.set()
                    break
