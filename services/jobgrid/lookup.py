"""Pure: what a search of the ring for job ids may conclude. No IO, no clock.

"No server knows this job" is a strong statement: a client that hears it drops its future with
`JobNotFound`. So a search concludes *absent* only from a settled grid: the node asking is serving
(a member with quorum), every member of the ring it asked answered (so every node that could hold a
copy was heard, and they are a majority), and the ring did not change while it asked. Anything less
is *undetermined* ("don't know yet"): the caller keeps waiting, or asks again.

The node shell runs a search twice before it believes an "absent": a copy that moves between nodes
(handoff to a promoter, re-replication before a prune) is always written to its new holder before it
is dropped by the old one, so a second round that starts after the first has ended sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .protocol import JobRecord, LookupResponse, Result

Found = Result | JobRecord | None  # None: a copy is held, with nothing to show yet (its result is being copied)


@dataclass(frozen=True)
class Verdict:
    """The outcome of a search for some ids."""

    found: dict[str, Found] = field(default_factory=dict)
    absent: tuple[str, ...] = ()        # every member of the ring answered: no copy anywhere
    undetermined: tuple[str, ...] = ()  # some node that might hold a copy did not answer (or the ring moved)


def merge(found: dict[str, Found], answers: Iterable[LookupResponse | None]) -> dict[str, Found]:
    """Add the peers' answers to `found`: a result beats a job record, which beats a bare "held"."""
    for a in answers:
        if a is None:
            continue
        for j in a.jobs:
            if found.get(j.spec.id) is None:
                found[j.spec.id] = j
        for r in a.results:
            found[r.job_id] = r
    return found


def conclude(ids: Sequence[str], found: Mapping[str, Found], *, answered: Iterable[str],
             members: Iterable[str], serving: bool, same_ring: bool) -> Verdict:
    """One round's verdict: what was found, and whether the rest is absent or not known yet.

    `answered`: the members that answered this round (the asking node included); `members`: the ring
    the round was asked of; `serving`: the asking node is a member with quorum; `same_ring`: the ring
    did not change during the round.
    """
    missing = tuple(i for i in ids if i not in found)
    got = {i: found[i] for i in ids if i in found}
    ms = set(members)
    settled = serving and same_ring and bool(ms) and ms <= set(answered)
    if settled:
        return Verdict(got, missing, ())
    return Verdict(got, (), missing)
