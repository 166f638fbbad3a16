"""Quorum with SWIM: the rule a node serves by (it accepts, leases and records only with quorum).

With SWIM a node hears ~2 members per period, so all-to-all's "a majority answered my heartbeats within
the fence window" cannot be checked any more. A node has quorum when all of these hold:
 1. it is a member of its ring;
 2. a probe it *sent* within the fence window was answered (directly or through a helper); the window is
    half the shortest suspicion (1 s at 5 members, 3 s at 1,000). A node cut off from everyone, or
    paused and resumed (send times count, not arrival times), fences within that window: before anyone
    can even declare it dead, let alone remove it;
 3. at least a quarter of its last 8 probes of members it held alive were answered. Probe targets are
    uniform over the ring, so the answered share estimates how much of the ring it reaches: a node in a
    small cut-off side (a few percent of the grid) fences in about 6 periods even when a lucky answer
    keeps rule 2 satisfied; probes of members already suspect or dead do not count, so the majority side
    of a partition, whose probes into the minority fail, keeps quorum;
 4. the members it holds alive (neither suspect nor dead, itself included) are a strict majority of its
    ring. This is what fences a large minority: its probes into the other side fail, its members suspect
    the other side's members and gossip the suspicions among themselves, and a node fences once it holds
    half of the ring not alive. A side of fraction f makes f(1-f)N failed probes per period over (1-f)N
    members, so after t periods it suspects about 1 - exp(-f t) of the other side, and rule 4 needs
    1/(2(1-f)) of it: 4.5 periods for f = 0.4, 8 for f = 0.49, plus the spread of the suspicions (each
    message carries up to `max_piggyback` of them). It stays fenced: no suspicion of the other side can
    be refuted across the cut.
The majority side keeps quorum (it holds more than half alive) and removes the minority only after their
suspicion runs out (4 log10 N periods at least, 12 at 1,000 members; the old leader's longer when it is
on the minority side) and a ring round. A split exactly in half leaves no side with a majority of votes:
nothing is removed anywhere and the grid resumes at the heal. The simulation (harness/sim) checks at every
run that each minority node is fenced for good before the majority commits its removal, and measures by
how much (docs/deploy.md). Rules 2-4 are estimates that a timing assumption makes safe; what no timing can
break is the ring rule (membership.py, rounds.py): a side without a majority of votes commits no ring, removes no one, promotes
nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .membership import SwimMembership


def fence_reason(m: SwimMembership, now: float) -> str | None:
    """Why `m` has no quorum at `now` (None: it has quorum); the reasons are the rules above, in order."""
    if not m.is_member:
        return "not a member of the ring"
    n = len(m.ring.members)
    if n == 1:
        return None  # a ring of one is its own majority
    if now - m.det.last_ack > m.cfg.fence_window(n):
        return f"no probe sent in the last {m.cfg.fence_window(n):.1f} s was answered"
    if not m.det.reachable():
        return f"fewer than a quarter of the last {len(m.det.outcomes)} probes were answered"
    if 2 * m.det.alive_count() <= n:
        return f"only {m.det.alive_count()} of the {n} members are held alive"
    return None
