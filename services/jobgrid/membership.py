"""Pure membership logic: who is in the ring, who is alive, who decides, who promotes.

No IO and no clock: callers pass `now` (monotonic seconds). The aiohttp node feeds it
heartbeat replies and ring announcements and carries out what it returns.

Rules:
- A peer is *in contact* when it answered a heartbeat that we sent at most `failure_timeout`
  ago (the send time counts, so replies that waited in a socket while we were paused are stale).
- A node *has quorum* when it and the peers in contact within the fence window form a strict
  majority of the last agreed ring. Without quorum it runs, hands out and records nothing.
- The *leader* is the member with the lowest ring position among those this node considers alive;
  only a leader with quorum removes members that have been silent for `failure_timeout`.
- A new ring always has a higher (epoch, proposer) key; a node adopts only higher keys.
- When a member leaves, its first surviving successor clockwise promotes its replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import ipaddress
import re

from . import ring as ringmath
from .protocol import MAX_EPOCH, Member, RingState

MAX_EPOCH_STEP = 1 << 20  # ring changes a node may have missed while away; more is a forged ring
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$")


@lru_cache(maxsize=8192)  # a ring of thousands is checked on every change: each address once
def valid_host(host: str) -> bool:
    """An IP address or a DNS name: something a node can be dialled at."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


@dataclass(frozen=True)
class RingChange:
    """What adopting a new ring means for this node."""

    added: tuple[Member, ...]
    removed: tuple[Member, ...]
    i_am_member: bool
    promote: tuple[Member, ...]          # removed members whose replicas this node now owns
    handoff: tuple[tuple[Member, Member], ...]  # (removed, promoter) pairs for replicas held here
    successors_changed: bool


@dataclass
class Membership:
    me: str
    ring: RingState
    replicas: int
    failure_timeout: float
    fence_window: float
    started: float = 0.0
    contact: dict[str, float] = field(default_factory=dict)   # peer -> send time of last good reply
    heard: dict[str, float] = field(default_factory=dict)     # peer -> last message received (display)
    active: dict[str, int] = field(default_factory=dict)      # peer -> active-queue length it reported
    backup: dict[str, int] = field(default_factory=dict)

    # ---- views ---------------------------------------------------------------------------------
    @property
    def members(self) -> list[Member]:
        return sorted(self.ring.members, key=lambda m: m.location)

    @property
    def member_ids(self) -> frozenset[str]:
        ring = self.ring
        cached = self.__dict__.get("_ids")
        if cached is None or cached[0] is not ring:
            cached = (ring, frozenset(m.id for m in ring.members))
            self.__dict__["_ids"] = cached
        return cached[1]

    def member(self, node_id: str) -> Member | None:
        for m in self.ring.members:
            if m.id == node_id:
                return m
        return None

    @property
    def is_member(self) -> bool:
        return self.member(self.me) is not None

    def peers(self) -> list[Member]:
        return [m for m in self.members if m.id != self.me]

    def _last(self, node_id: str) -> float:
        return self.contact.get(node_id, self.started)

    def status(self, node_id: str, now: float) -> str:
        if node_id == self.me:
            return "alive"
        age = now - self._last(node_id)
        if age > self.failure_timeout:
            return "dead"
        if age > self.fence_window:
            return "suspect"
        return "alive"

    def has_quorum(self, now: float) -> bool:
        ms = self.ring.members
        if not self.is_member:
            return False
        fresh = sum(1 for m in ms if m.id == self.me or now - self._last(m.id) <= self.fence_window)
        return 2 * fresh > len(ms)

    def leader(self, now: float) -> str | None:
        for m in self.members:
            if self.status(m.id, now) != "dead":
                return m.id
        return None

    def successors(self, node_id: str, count: int | None = None) -> list[Member]:
        m = self.member(node_id)
        if m is None:
            return []
        n = self.replicas - 1 if count is None else count
        by_pos = {x.location: x for x in self.ring.members}
        return [by_pos[p] for p in ringmath.successors(list(by_pos), m.location, n)]

    def promoter_for(self, location: int, ring: RingState | None = None) -> Member | None:
        r = ring or self.ring
        if not r.members:
            return None
        by_pos = {x.location: x for x in r.members}
        return by_pos[ringmath.covering(list(by_pos), location)]

    # ---- inputs --------------------------------------------------------------------------------
    def on_reply(self, peer: str, sent_at: float, active: int | None = None) -> None:
        if sent_at > self.contact.get(peer, float("-inf")):
            self.contact[peer] = sent_at
        if active is not None:
            self.active[peer] = active

    def drained(self, peer: str) -> None:
        """A steal found `peer`'s queue empty: count it empty until its next heartbeat says otherwise."""
        self.active[peer] = 0

    def on_heartbeat(self, peer: str, now: float, active: int, backup: int = 0) -> None:
        self.heard[peer] = now
        self.active[peer] = active
        self.backup[peer] = backup

    # ---- decisions -------------------------------------------------------------------------------
    def propose_removals(self, now: float) -> RingState | None:
        """The new ring if this node is the leader, has quorum, and some member is silent too long."""
        if not self.has_quorum(now) or self.leader(now) != self.me:
            return None
        dead = [m for m in self.ring.members if self.status(m.id, now) == "dead"]
        if not dead:
            return None
        keep = [m for m in self.ring.members if m not in dead]
        return RingState(epoch=self.ring.epoch + 1, members=keep, proposer=self.me, replicas=self.ring.replicas)

    def with_joined(self, newcomer: Member) -> RingState:
        members = [m for m in self.ring.members if m.id != newcomer.id] + [newcomer]
        return RingState(epoch=self.ring.epoch + 1, members=members, proposer=newcomer.id,
                         replicas=self.ring.replicas)

    def ring_problem(self, new: RingState, my_address: tuple[str, int] | None = None) -> str | None:
        """Why `new` breaks an invariant every ring keeps, whoever sent it (None: it keeps them all).

        Non-empty, unique ids and positions, a proposer among its members, valid addresses, an epoch that
        grows by at most MAX_EPOCH_STEP and can still grow (so a node restarting from it can start), and
        this node, if listed, at its own address."""
        ids = [m.id for m in new.members]
        if not ids:
            return "a ring without members"
        if len(set(ids)) != len(ids) or len({m.location for m in new.members}) != len(ids):
            return "ring has duplicate member ids or locations"
        if new.proposer not in ids:
            return f"the proposer {new.proposer!r} is not a member of the ring it proposes"
        if new.epoch >= MAX_EPOCH:
            return f"epoch {new.epoch} is too large to grow further"
        if self.ring.members and new.epoch > self.ring.epoch + MAX_EPOCH_STEP:
            return f"epoch jumps from {self.ring.epoch} to {new.epoch} (more than {MAX_EPOCH_STEP} changes at once)"
        bad = next((m for m in new.members if not valid_host(m.ip)), None)
        if bad is not None:
            return f"member {bad.id} has an invalid address {bad.ip[:80]!r}"
        mine = next((m for m in new.members if m.id == self.me), None)
        if mine is not None and my_address is not None and (mine.ip, mine.port) != my_address:
            return (f"the ring puts this node ({self.me}) at {mine.ip}:{mine.port}, "
                    f"but it is at {my_address[0]}:{my_address[1]}")
        return None

    def copy_problem(self, sender: str, epoch: int) -> str | None:
        """Why copies (replicas, results, lease notes) sent by `sender` from its ring `epoch` are not taken
        (answered 409 with our ring, which tells the sender where it stands): it is no member of our ring,
        and its ring is not newer than ours. That includes a member the grid removed (a node cut off by a
        partition): what it wrote after the removal (a result it recorded in the failure-detection window)
        stays with it as an orphan and reaches the grid only through reconciliation, which keeps the record
        of a member if there is one. A sender with a newer ring is taken: this node is behind."""
        if self.member(sender) is not None or epoch > self.ring.epoch:
            return None
        return f"sender {sender} is not a member of ring epoch {self.ring.epoch}"

    def push_problem(self, new: RingState, sender: str | None, lock_holder: str | None) -> str | None:
        """Why a ring announced to this node (not fetched by it) is not taken from `sender`: it must come
        from a member of the current ring, or be the join of the node holding this node's add_lock."""
        old = {m.id: m for m in self.ring.members}
        if self.is_member and all(m.id != self.me for m in new.members) and new.proposer not in old:
            return f"a ring without this node, proposed by {new.proposer!r}, who is not a member of its ring"
        if sender is not None and self.member(sender) is not None:
            return None
        if (sender is not None and sender == new.proposer == lock_holder and sender not in old
                and new.epoch == self.ring.epoch + 1
                and {m.id: m for m in new.members if m.id != sender} == old):
            return None
        return (f"a ring announced by {sender or 'an unnamed node'}, which is neither a member of ring epoch "
                f"{self.ring.epoch} nor the joiner holding this node's add_lock")

    def adopt(self, new: RingState, now: float) -> RingChange | None:
        """Take `new` if it is newer; say what changed for this node."""
        if new.key() <= self.ring.key():
            return None
        old = self.ring
        old_ids = {m.id: m for m in old.members}
        new_ids = {m.id: m for m in new.members}
        added = tuple(m for i, m in new_ids.items() if i not in old_ids)
        removed = tuple(m for i, m in old_ids.items() if i not in new_ids)
        old_succ = [m.id for m in self.successors(self.me)]
        self.ring = new
        if new.replicas:  # R belongs to the grid: every member follows its ring's
            self.replicas = new.replicas
        for m in added:  # a newcomer starts with a full failure timeout of grace
            self.contact[m.id] = max(self.contact.get(m.id, now), now)
        for m in removed:
            self.contact.pop(m.id, None)
        i_am = self.me in new_ids
        promote, handoff = [], []
        if i_am:
            for m in removed:
                if m.id == self.me:
                    continue
                p = self.promoter_for(m.location, new)
                if p is not None and p.id == self.me:
                    promote.append(m)
                elif p is not None:
                    handoff.append((m, p))
        new_succ = [m.id for m in self.successors(self.me)]
        return RingChange(added=added, removed=removed, i_am_member=i_am, promote=tuple(promote),
                          handoff=tuple(handoff), successors_changed=old_succ != new_succ)


@dataclass
class AddLock:
    """The seed's add_lock: one joiner at a time; it expires if its holder dies mid-join."""

    holder: str | None = None
    until: float = 0.0

    def acquire(self, holder: str, now: float, ttl: float) -> bool:
        if self.holder is None or self.holder == holder or now >= self.until:
            self.holder, self.until = holder, now + ttl
            return True
        return False

    def release(self, holder: str) -> bool:
        if self.holder == holder:
            self.holder, self.until = None, 0.0
            return True
        return False

    def current(self, now: float) -> str | None:
        return self.holder if self.holder is not None and now < self.until else None


def join_backoff(attempt: int, rand: float, base: float = 0.05, cap: float = 2.0) -> float:
    """Randomised, growing back-off for a joiner refused an add_lock (`rand` in [0, 1))."""
    return min(cap, base * (2 ** attempt)) * (0.5 + rand)
