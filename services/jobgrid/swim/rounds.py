"""Ring rounds: each new ring epoch is decided by a majority of the ring before it (single-decree Paxos
per epoch, the "slot"), so no two different rings can ever be committed for the same epoch.

Why (and why the all-to-all rule is not enough at scale): all-to-all lets a leader that *hears* a
majority remove members. Hearing is not voting: under a bridge partition one node heard by both sides
counts towards both majorities, and with SWIM no node hears a majority directly anyway. Here a ring
change needs *votes*: the leader (lowest position not dead, with quorum) sends `Prepare(slot, round)` to the
members of ring `slot - 1`; each promises to ignore lower ballots and returns what it already accepted
for that slot; with promises from a strict majority the leader proposes (`Accept`) the highest-ballot
value already accepted, else its own change; a strict majority accepting commits it. A ballot is
(round, leader id). Any two majorities of one ring share a member, which answers only the higher ballot
and hands on what it accepted, so a value once accepted by a majority is the only one any later ballot
can commit: two sides of a partition can never both commit a ring for the same epoch, and a side holding
no majority of the current ring commits nothing, so it never removes a member and never promotes.
Every committed ring is built on the committed ring before it, so the rings form one chain.

An acceptor votes only for the slot right after its own committed ring and only on that ring as base
(a node behind or ahead refuses, saying where it is). The shell must persist the votes (`Step.votes`)
before the answer leaves and restore them on restart: an acceptor that forgot a promise could break the
argument above (and the leader's own votes are kept the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import RingState
from .messages import RingDelta

Ballot = tuple[int, str]  # (round, leader id)
NO_BALLOT: Ballot = (0, "")


@dataclass
class Acceptor:
    """This node's votes for the epoch after its committed ring."""

    slot: int = 0
    promised: Ballot = NO_BALLOT
    accepted_ballot: Ballot = NO_BALLOT
    accepted: RingDelta | None = None

    def moved_to(self, slot: int) -> None:
        if slot != self.slot:
            self.slot, self.promised, self.accepted_ballot, self.accepted = slot, NO_BALLOT, NO_BALLOT, None

    def prepare(self, slot: int, ballot: Ballot) -> bool:
        if slot != self.slot or ballot < self.promised:
            return False
        self.promised = ballot
        return True

    def accept(self, slot: int, ballot: Ballot, value: RingDelta) -> bool:
        if slot != self.slot or ballot < self.promised:
            return False
        self.promised = self.accepted_ballot = ballot
        self.accepted = value
        return True

    def state(self) -> tuple[int, Ballot, Ballot, RingDelta | None]:
        return self.slot, self.promised, self.accepted_ballot, self.accepted


@dataclass
class Round:
    """One leader's attempt to decide epoch `slot`: promises, then accepts, from a majority of `base`."""

    base: RingState
    ballot: Ballot
    proposal: RingDelta  # what this leader wants (used unless a promise brings an accepted value)
    deadline: float
    phase: str = "prepare"
    promises: dict[str, tuple[Ballot, RingDelta | None]] = field(default_factory=dict)
    accepts: set[str] = field(default_factory=set)
    value: RingDelta | None = None
    refused_by: Ballot = NO_BALLOT  # the highest ballot an acceptor promised instead of ours
    refused: set[str] = field(default_factory=set)  # voters that said no in the current phase

    @property
    def slot(self) -> int:
        return self.base.epoch + 1

    def __post_init__(self) -> None:
        self.voters: frozenset[str] = frozenset(m.id for m in self.base.members)

    def majority(self) -> int:
        return len(self.base.members) // 2 + 1

    def hopeless(self) -> bool:
        """So many voters refused this phase that no majority can be reached: give up now, not at the deadline."""
        return self.phase in ("prepare", "accept") and len(self.voters) - len(self.refused) < self.majority()

    def on_promise(self, voter: str, ok: bool, accepted_ballot: Ballot, accepted: RingDelta | None,
                   promised: Ballot = NO_BALLOT) -> RingDelta | None:
        """Count a promise; the value to send in `Accept` once a majority promised (None: not yet)."""
        if self.phase != "prepare" or voter not in self.voters:
            return None
        if not ok:
            self._refused(voter, promised)
            return None
        self.promises[voter] = (accepted_ballot, accepted)
        if len(self.promises) < self.majority():
            return None
        best = max(((b, v) for b, v in self.promises.values() if v is not None), default=None, key=lambda x: x[0])
        self.value = best[1] if best is not None else self.proposal
        self.phase = "accept"
        self.refused = set()
        return self.value

    def _refused(self, voter: str, promised: Ballot) -> None:
        self.refused_by = max(self.refused_by, promised)
        self.refused.add(voter)

    def on_accepted(self, voter: str, ok: bool, promised: Ballot = NO_BALLOT) -> bool:
        """Count an acceptance; True exactly once, when a majority accepted (the value is committed)."""
        if self.phase != "accept" or voter not in self.voters:
            return False
        if not ok:
            self._refused(voter, promised)
            return None is not None
        self.accepts.add(voter)
        if len(self.accepts) >= self.majority():
            self.phase = "committed"
            return True
        return False
