"""Finding jobs across the ring for clients: found, absent (settled grid only), or not known yet.

A mixin of `Grid` (its store, ring view and peers); the decision is `jobgrid.lookup.conclude`.
"""

from __future__ import annotations

import asyncio

from ..errors import ProtocolError
from ..lookup import Found, Verdict, conclude, merge
from ..protocol import JobRecord, LookupRequest, LookupResponse, Member, Result
from .peers import PeerError


class Search:
    def held_here(self, ids: list[str]) -> dict[str, Found]:
        """What this node holds of `ids`: results (None while their copies are being written), else jobs
        (owned, replicas, orphans: any copy means the job exists)."""
        out: dict[str, Found] = {}
        for i, r in self.store.get_results(ids).items():
            out[i] = None if i in self.unreplicated else r
        for i, (rec, _) in self.store.get_jobs([i for i in ids if i not in out]).items():
            out[i] = rec
        return out

    async def _lookup_one(self, m: Member, ids: list[str]) -> LookupResponse | None:
        try:
            return await self.peers.call(m.ip, m.port, "/peer/lookup", LookupRequest(ids=ids), LookupResponse,
                                         timeout=min(3.0, max(1.0, self.t.failure_timeout)))
        except (PeerError, ProtocolError):
            return None

    async def find(self, ids: list[str], local: dict[str, Found] | None = None, *,
                   want_results: bool = False) -> Verdict:
        """Search the ring for `ids`. Ids no member holds are *absent* only after two complete rounds
        (every member answered, this node serving, the ring unchanged); otherwise *undetermined*.
        `want_results`: also ask the others about ids held here without a result (a replica's owner
        may have recorded it)."""
        found: dict[str, Found] = dict(local) if local is not None else self.held_here(ids)
        verdict = Verdict(found={i: found[i] for i in ids if i in found})
        for _ in range(2):
            missing = [i for i in ids if (not isinstance(found.get(i), Result) if want_results else i not in found)]
            if not missing:
                return Verdict(found={i: found[i] for i in ids})
            key = self.mem.ring.key()
            members = [m.id for m in self.mem.ring.members]
            peers = self.mem.peers()
            answers = await asyncio.gather(*(self._lookup_one(m, missing) for m in peers))
            merge(found, answers)
            for i, v in self.held_here([i for i in missing if i not in found]).items():
                found[i] = v  # a copy that reached this node meanwhile
            if want_results and all(i in found for i in ids):
                return Verdict(found={i: found[i] for i in ids})
            answered = [self.id] + [m.id for m, a in zip(peers, answers) if a is not None]
            verdict = conclude(ids, found, answered=answered, members=members, serving=self.can_serve(),
                               same_ring=key == self.mem.ring.key())
            if not verdict.absent:
                return verdict
        return verdict

    async def locate(self, job_id: str) -> Result | JobRecord | None | Verdict:
        """The freshest thing known about a job: a result anywhere, else a queued record; None when the
        grid is settled and no member holds it; the undetermined `Verdict` when it cannot tell yet."""
        res = self.store.get_results([job_id]).get(job_id)
        if res is not None:
            return res
        held = self.store.get_jobs([job_id]).get(job_id)
        if held is not None and held[0].owner == self.id:
            return held[0]
        v = await self.find([job_id], {job_id: held[0]} if held is not None else {}, want_results=True)
        got = v.found.get(job_id)
        if isinstance(got, (Result, JobRecord)):
            return got
        if v.absent:
            return None
        return v
