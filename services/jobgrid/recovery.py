"""Pure: bringing a grid back after an outage (power cut, `compose down`, every pod rescheduled).

A node restarted on its data dir knows the ring it last agreed to. If a live grid answers, it goes
back into it as before. If nobody is live, every member that answers is in the same situation: the
newest ring any of them saved is the grid to bring back, and it comes back when a strict majority of
that ring's members are up and can see each other (the same majority that any decision needed before
the outage). Members still missing then are handled like any failed node: the leader removes them
after the failure timeout and their copies are promoted. Until then nothing runs and nothing is
answered as if the grid were settled.

`force` (the operator's `--force-new-cluster`) brings a grid up from whoever is back now, even a
minority: a new ring of the members that answered, with every other member removed. It is an explicit
decision for when the rest are gone for good: used on both sides of a partition it makes two grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .protocol import Member, RecoveryState, RingState


@dataclass(frozen=True)
class Decision:
    """What a restarting node does next."""

    action: Literal["live", "resume", "force", "wait"]
    ring: RingState                  # live: the grid's ring; resume/wait: the ring to bring back; force: the new one
    back: tuple[str, ...] = ()       # members of that ring that are up (this node included)
    missing: tuple[Member, ...] = ()  # members not heard from (wait: the ones it waits for)
    base: RingState | None = None    # force: the ring it was made from (its removals are promoted)


def decide(me: str, saved: RingState, heard: Sequence[RecoveryState], *, force: bool = False) -> Decision:
    """`heard`: the answers of the members (and join address) this node could reach this round."""
    live = [h.ring for h in heard if h.live and h.ring.members]
    if live:
        return Decision("live", max(live, key=RingState.key))
    rings = [saved] + [h.saved for h in heard if h.saved is not None and h.saved.members]
    best = max(rings, key=RingState.key)
    ids = {m.id for m in best.members}
    back = tuple(sorted(({me} | {h.node for h in heard if not h.live}) & ids))
    missing = tuple(m for m in best.members if m.id not in back)
    if me in ids and 2 * len(back) > len(ids):
        return Decision("resume", best, back, missing)
    if force and me in ids:
        ring = RingState(epoch=best.epoch + 1, members=[m for m in best.members if m.id in back], proposer=me,
                         replicas=best.replicas)
        return Decision("force", ring, back, missing, base=best)
    return Decision("wait", best, back, missing)


def describe(d: Decision) -> str:
    """The reason a waiting node gives on /healthz, in the CLI and on the dashboard."""
    need = len(d.ring.members) // 2 + 1
    waiting = ", ".join(f"{m.id} at {m.ip}:{m.port}" for m in d.missing) or "nobody"
    return (f"restarting after an outage: waiting for a majority of the ring it knew (epoch {d.ring.epoch}): "
            f"{len(d.back)} of {len(d.ring.members)} members back, {need} needed; waiting for {waiting}. "
            "If those are gone for good, an operator can force the grid up from the survivors "
            "(--force-new-cluster, see docs/guarantees.md)")


# ---- how a node starts ---------------------------------------------------------------------------------
Start = Literal["new-grid", "recover", "contact"]
Contact = Literal["resume", "rejoin", "join"]
DEFAULT_REPLICAS = 3


def first_step(saved: RingState | None, contacts: Sequence[tuple[str, int]]) -> Start:
    """new-grid: nobody to ask (the first node, or a grid of one restarting); recover: restarted on a data
    dir that knew a ring (wait for a live grid or a majority of it); contact: a new node joining a grid."""
    if not contacts:
        return "new-grid"
    if saved is not None and saved.members:
        return "recover"
    return "contact"


def new_grid(saved: RingState | None, me: str, member: Member, replicas: int | None) -> RingState:
    """The ring of a grid that starts (or restarts) with this node alone: position 0 (or the one it had)."""
    epoch = saved.epoch + 1 if saved is not None else 1
    keep = saved.replicas if saved is not None and saved.replicas else (replicas or DEFAULT_REPLICAS)
    return RingState(epoch=epoch, members=[member], proposer=me, replicas=keep)


def on_contact(ring: RingState, me: str, address: tuple[str, int], saved: RingState | None) -> Contact:
    """What a node does with the ring of a live grid: resume its place (it is still a member, at its
    address), rejoin as a new incarnation (it was removed while away), or join as a newcomer."""
    mine = next((m for m in ring.members if m.id == me), None)
    if mine is not None and (mine.ip, mine.port) == address:
        return "resume"
    if saved is not None and any(m.id == me for m in saved.members):
        return "rejoin"
    return "join"


def replicas_problem(asked: int | None, ring: RingState) -> str | None:
    """Why a node started with `--replicas asked` may not join `ring` (None: it may). R belongs to the grid:
    a node without the setting adopts the grid's; one that asks for another R refuses, naming both."""
    have = ring.replicas or DEFAULT_REPLICAS
    if asked is None or asked == have:
        return None
    return (f"this grid keeps {have} copies of every job, but this node was started with --replicas {asked}; "
            f"start it without --replicas (it adopts the grid's) or with --replicas {have}")


def peer_addresses(contacts: Sequence[tuple[str, int]], resolved: dict[str, Sequence[str]],
                   me: tuple[str, int]) -> list[tuple[str, int]]:
    """The addresses to ask, in order: each contact's every address (`resolved[host]`: a DNS name such as
    Swarm's `tasks.<service>` or a Kubernetes headless Service names every live member; a name that does not
    resolve yet gives none), without repeats and without this node's own address."""
    out: dict[tuple[str, int], None] = {}
    for host, port in contacts:
        for ip in resolved.get(host, ()):
            if (ip, port) != me:
                out[(ip, port)] = None
    return list(out)
