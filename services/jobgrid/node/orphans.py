"""Orphans: rows whose owner is in no ring this node follows any more (a departed member whose copies
landed here late, or this node's own former incarnation after it was removed and rejoined).

`plan` (pure) decides per owner: adopt them here (this node covers the departed owner's position),
hand them to the node that does, or, for an owner nobody covers knowingly (our former self), ask the
grid id by id: drop what the grid has, adopt what only we hold. A result our former self recorded but
never finished copying is never handed out (see `Store.copied`) until this reconciliation settles it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..membership import Membership
from ..protocol import JobRecord, Member, Result
from .context import NodeContext
from .replication import Owning, Replication
from .search import Search


@dataclass(frozen=True)
class Step:
    owner: str
    action: Literal["adopt", "handoff", "ask"]
    to: Member | None = None  # handoff: the node that covers the departed owner now


def plan(owners: Iterable[str], mem: Membership, me: str, departed: Mapping[str, Member],
         former_self: Callable[[str], bool]) -> list[Step]:
    members = {m.id for m in mem.ring.members}
    out: list[Step] = []
    for owner in sorted(owners):
        if owner in members or owner == me:
            continue
        dead = None if former_self(owner) else departed.get(owner)
        p = mem.promoter_for(dead.location) if dead is not None else None
        if p is None:
            out.append(Step(owner, "ask"))
        elif p.id == me:
            out.append(Step(owner, "adopt"))
        else:
            out.append(Step(owner, "handoff", p))
    return out


class Orphans:
    def __init__(self, ctx: NodeContext, replication: Replication, search: Search, owning: Owning,
                 report_to: Callable[[str, list[Result]], object]) -> None:
        self.ctx = ctx
        self.replication = replication
        self.search = search
        self.owning = owning
        self.report_to = report_to  # (owner id, results) -> awaitable: a finished run goes to its owner

    async def reconcile(self) -> None:
        ctx = self.ctx
        for step in plan(ctx.store.owners(), ctx.mem, ctx.id, ctx.departed, ctx.identity.is_former_self):
            if step.action == "adopt":
                self.owning.adopt(step.owner, None)
            elif step.action == "handoff":
                assert step.to is not None
                await self.replication.handoff(ctx.departed[step.owner], step.to)
            else:
                await self._ask(step.owner)

    async def _ask(self, owner: str) -> None:
        """Rows of an owner nobody covers: drop what the grid has, adopt what only we hold."""
        store = self.ctx.store
        while True:
            jobs = store.jobs_of(owner, limit=1000)
            res = store.results_of(owner, limit=1000)
            if not jobs and not res:
                return
            ids = [j.spec.id for j in jobs] + [r.job_id for r in res]
            v = await self.search.find(ids, {}, here=False)
            if v.undetermined:  # cannot tell yet: keep them, unshown, and try again on the next resync
                self.ctx.signals.resync.set()
                return
            mine = {r.job_id: r for r in res}
            adopt = list(v.absent)
            for i, there in v.found.items():
                if isinstance(there, JobRecord) and i in mine:
                    # the grid still has it queued, we hold a finished run of it: report that result
                    await self.report_to(there.owner, [mine[i]])
            if adopt:
                self.owning.adopt(owner, adopt)
                self.ctx.event("orphans_adopted", owner=owner, jobs=len(adopt))
            store.drop_owner(owner, [i for i in ids if i not in set(adopt)])
