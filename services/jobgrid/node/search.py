"""Finding jobs across the ring for clients: found, absent (settled grid only), or not known yet.

The decision is `jobgrid.lookup.conclude` (pure); this class asks the members and answers their asks.
"""

from __future__ import annotations

import asyncio

from ..errors import ProtocolError
from ..lookup import Found, Verdict, conclude, merge
from ..protocol import JobRecord, LookupRequest, LookupResponse, Member, Result
from .context import NodeContext
from .peers import PeerError


class Search:
    def __init__(self, ctx: NodeContext, serving) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.serving = serving  # () -> bool: this node is a member with quorum (RingKeeper.can_serve)

    def held_here(self, ids: list[str], orphaned: set[str] | None = None) -> dict[str, Found]:
        """What this node holds of `ids`: results that may be handed out, else None while a result's copies
        are being written, else job records (owned or replicas). A copy held under an owner that is no
        member of the ring (an orphan: not handed out until reconciled) is None and goes in `orphaned`."""
        members = self.ctx.mem.member_ids
        out: dict[str, Found] = {}
        for i, (r, owner, copied) in self.store.held_results(ids).items():
            out[i] = r if copied and owner in members else None
            if owner not in members and orphaned is not None:
                orphaned.add(i)
        for i, (rec, _) in self.store.get_jobs([i for i in ids if i not in out]).items():
            if rec.owner in members:
                out[i] = rec
            else:
                out[i] = None
                if orphaned is not None:
                    orphaned.add(i)
        return out

    def on_lookup(self, req: LookupRequest) -> LookupResponse:
        orphaned: set[str] = set()
        held = self.held_here(req.ids, orphaned)
        return LookupResponse(results=[v for v in held.values() if isinstance(v, Result)],
                              jobs=[v for v in held.values() if isinstance(v, JobRecord)],
                              pending=[i for i, v in held.items() if v is None and i not in orphaned],
                              orphaned=sorted(orphaned))

    async def _lookup_one(self, m: Member, ids: list[str]) -> LookupResponse | None:
        try:
            return await self.ctx.peers.call(m.ip, m.port, "/peer/lookup", LookupRequest(ids=ids), LookupResponse)
        except (PeerError, ProtocolError):
            return None

    async def find(self, ids: list[str], local: dict[str, Found] | None = None, *,
                   want_results: bool = False, here: bool = True, members_only: bool = False) -> Verdict:
        """Search the ring for `ids`. Ids no member holds are *absent* only after two complete rounds
        (every member answered, this node serving, the ring unchanged); otherwise *undetermined*.
        `want_results`: also ask the others about ids held here without a result (a replica's owner
        may have recorded it). `here=False`: what this node holds does not count (orphan reconciliation
        asks whether anyone *else* has them). `members_only`: orphan copies elsewhere do not count as found
        (reconciliation decides whether any *member* still has a job)."""
        mem = self.ctx.mem
        found: dict[str, Found] = dict(local) if local is not None else self.held_here(ids)
        verdict = Verdict(found={i: found[i] for i in ids if i in found})
        for _ in range(2):
            missing = [i for i in ids if (not isinstance(found.get(i), Result) if want_results else i not in found)]
            if not missing:
                return Verdict(found={i: found[i] for i in ids})
            key = mem.ring.key()
            members = [m.id for m in mem.ring.members]
            peers = mem.peers()
            answers = await asyncio.gather(*(self._lookup_one(m, missing) for m in peers))
            merge(found, answers, members_only=members_only)
            if here:
                for i, v in self.held_here([i for i in missing if i not in found]).items():
                    found[i] = v  # a copy that reached this node meanwhile
            if want_results and all(i in found for i in ids):
                return Verdict(found={i: found[i] for i in ids})
            answered = [self.ctx.id] + [m.id for m, a in zip(peers, answers) if a is not None]
            verdict = conclude(ids, found, answered=answered, members=members, serving=self.serving(),
                               same_ring=key == mem.ring.key())
            if not verdict.absent:
                return verdict
        return verdict

    async def locate(self, job_id: str) -> Result | JobRecord | None | Verdict:
        """The freshest thing known about a job: a result anywhere, else a queued record; None when the
        grid is settled and no member holds it; the undetermined `Verdict` when it cannot tell yet."""
        held = self.held_here([job_id]).get(job_id, ...)
        if isinstance(held, Result) or (isinstance(held, JobRecord) and held.owner == self.ctx.id):
            return held
        v = await self.find([job_id], {} if held is ... else {job_id: held}, want_results=True)
        got = v.found.get(job_id)
        if isinstance(got, (Result, JobRecord)):
            return got
        if v.absent:
            return None
        return v
