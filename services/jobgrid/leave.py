"""Pure: a graceful leave (SIGTERM, `jobgrid leave`). What the leaving node does next and in what order,
and when a member accepts a departure and which ring it proposes for it.

No IO and no clock: callers pass `now` (monotonic seconds) and what they see; the node's shell
(`node/leaving.py`) carries the steps out. The order, each step taken only once the one before is done:

1. drain: take no submissions, leases or steals (clients get 503 + Retry-After and try another node);
2. let the jobs this node's runner started finish, up to the grace period, and report their results;
3. past the grace period, hand the leases of the jobs still running back (they run again elsewhere);
4. hand over: every successor holds every job and result of ours, leases included (the copies the
   successor promotes must say who runs what, or a job stolen from us would run twice); done again
   whenever the ring changes before we are out of it (our successors, or our rows, may have changed);
5. announce: take every member's add_lock (ring changes one at a time, as joins: two departures at once
   would propose two rings of the same epoch, and the one that wins would still list the other leaver),
   then ask a member (our successor first: it holds our copies and will own our jobs) to propose the
   ring without us; it adopts it at once and tells everyone, so no failure timeout passes;
6. with R = 1 nobody holds copies of ours: hand our rows to the new owner through the handoff path;
7. exit 0. Past the leave timeout, whatever the step, exit with `EXIT_TIMED_OUT`: the grid then treats
   the node as failed, as after a crash. The last member of a grid has nobody to leave to: it lets its
   running jobs finish (steps 1-3), then stops with its jobs kept in its data dir.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ring as ringmath
from .membership import Membership
from .protocol import Member, RingState

EXIT_LEFT = 0        # left the ring (or stopped as its last member)
EXIT_TIMED_OUT = 3   # the leave timeout passed first: the grid treats the node as failed


@dataclass(frozen=True)
class LeavePolicy:
    grace: float     # how long running jobs may go on before their leases are handed back
    timeout: float   # the whole leave; then the node exits anyway

    @classmethod
    def of(cls, grace: float, timeout: float) -> LeavePolicy:
        """The grace period never takes the whole timeout: a quarter of it is left to hand over and announce."""
        return cls(grace=min(grace, 0.75 * timeout), timeout=timeout)


@dataclass(frozen=True)
class LeaveView:
    """What the shell sees now."""

    running: int       # jobs our runner started and has not finished, or whose results are not reported yet
    members: int       # members of the ring we follow
    in_ring: bool      # we are one of them
    handed_over: bool  # step 4 is done, for the ring we follow now
    replicas: int      # R of the grid
    rows_left: bool    # jobs or results of ours still in our store (after leaving: only matters with R = 1)


# ---- instructions -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WaitRuns:
    until: float           # monotonic time the grace period ends


@dataclass(frozen=True)
class HandBackLeases:
    pass


@dataclass(frozen=True)
class HandOver:
    pass


@dataclass(frozen=True)
class Announce:
    pass


@dataclass(frozen=True)
class HandOff:
    pass


@dataclass(frozen=True)
class Exit:
    code: int
    reason: str


Step = WaitRuns | HandBackLeases | HandOver | Announce | HandOff | Exit


@dataclass(frozen=True)
class Leave:
    """One graceful leave, begun at `started`."""

    policy: LeavePolicy
    started: float

    @property
    def deadline(self) -> float:
        return self.started + self.policy.timeout

    def next(self, now: float, v: LeaveView) -> Step:
        if now >= self.deadline:
            return Exit(EXIT_TIMED_OUT, f"the leave took longer than {self.policy.timeout:g} s; the grid will "
                                        "treat this node as failed")
        if not v.in_ring:
            if v.replicas <= 1 and v.rows_left:
                return HandOff()
            return Exit(EXIT_LEFT, "left the ring")
        if v.running > 0:
            if now < self.started + self.policy.grace:
                return WaitRuns(until=self.started + self.policy.grace)
            return HandBackLeases()
        if v.members <= 1:
            return Exit(EXIT_LEFT, "the last member of the grid stopped; its jobs stay in its data dir")
        if not v.handed_over:
            return HandOver()
        return Announce()


# ---- the other side: a member asked to let a node go --------------------------------------------------------
def departure_ring(mem: Membership, leaver: str, now: float, lock_holder: str | None,
                   epoch: int | None = None) -> RingState | str | None:
    """The ring without `leaver` that this member proposes; None if `leaver` is not a member any more (it left
    already: nothing to do); a string: why not now (the leaver asks again, or another member). `epoch`: the
    ring the leaver handed its copies over for; another one may have other successors, so it must match."""
    if leaver == mem.me:
        return "a departure in this node's own name"
    if not mem.is_member:
        return "this node is not a member of the ring"
    if mem.member(leaver) is None:
        return None
    if not mem.has_quorum(now):
        return "this node cannot reach a majority of the ring; ask another member"
    if epoch is not None and epoch != mem.ring.epoch:
        return f"asked for ring epoch {epoch}, this node follows epoch {mem.ring.epoch}; hand over again and ask"
    if lock_holder != leaver:  # departures, like joins, one at a time: the leaver holds every member's add_lock
        return (f"the add_lock is held by {lock_holder}, another ring change in progress; ask again" if lock_holder
                else f"{leaver} does not hold this node's add_lock; take every member's first")
    keep = [m for m in mem.ring.members if m.id != leaver]
    return RingState(epoch=mem.ring.epoch + 1, members=keep, proposer=mem.me, replicas=mem.ring.replicas)


def ask_order(ring: RingState, leaver: str) -> list[Member]:
    """Whom the leaver asks, in order: the member that will cover its position (its successor, who holds its
    copies and promotes them), then the others clockwise from it."""
    me = next((m for m in ring.members if m.id == leaver), None)
    others = [m for m in ring.members if m.id != leaver]
    if me is None or not others:
        return others
    by_pos = {m.location: m for m in others}
    return [by_pos[p] for p in ringmath.clockwise(list(by_pos), me.location)]
