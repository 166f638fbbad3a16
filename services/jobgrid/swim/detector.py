"""SWIM failure detection: one probe per protocol period, indirect probes, suspicion before death.

Pure: the caller passes `now` and gets back (address id, message) pairs to send. Semantics follow
memberlist's state.go:
- Targets come in randomised round-robin: the members shuffled, walked in order, reshuffled at the end
  (a new member is put at a random place), so every live member is probed within N periods by each node.
- A direct `Ping` unanswered after `probe_timeout` makes this node ask `indirect_checks` random alive
  members to probe the target (`PingReq`); an `Ack` by either route before the period ends clears it.
  Otherwise the target becomes *suspect* at its known incarnation.
- A suspicion lasts between suspicion_min and suspicion_max (= suspicion_max_mult x min); each independent
  confirmation (a suspect update from another origin) shortens it logarithmically towards the minimum.
  When it runs out the member is *dead*. A member that learns it is suspected (or declared dead) refutes:
  it raises its incarnation above the accusation and gossips `alive`, which overrides suspect/dead at a
  lower incarnation.
- Every state change this node learns or makes is queued for piggybacking (gossip.py).
- Every `reconnect_periods` a node pings one member it holds dead (Serf's reconnect): after a partition
  heals, the answer carries the other side's ring key, and the node catches up (membership.py).
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from .config import SwimConfig
from .gossip import BroadcastQueue
from .messages import Ack, NodeUpdate, Ping, PingReq

ALIVE, SUSPECT, DEAD = "alive", "suspect", "dead"


@dataclass
class PeerState:
    incarnation: int = 0
    state: str = ALIVE
    since: float = 0.0


@dataclass
class Suspicion:
    start: float
    k: int
    min: float
    max: float
    deadline: float
    confirmers: set[str] = field(default_factory=set)

    def confirm(self, origin: str) -> bool:
        """A new independent accuser: shorten the deadline (memberlist's remainingSuspicionTime)."""
        if len(self.confirmers) - 1 >= self.k or origin in self.confirmers:  # the first accuser is no confirmation
            return False
        self.confirmers.add(origin)
        n = len(self.confirmers) - 1
        frac = math.log(n + 1) / math.log(self.k + 1)
        self.deadline = self.start + max(self.min, self.max - frac * (self.max - self.min))
        return True


@dataclass
class Probe:
    seq: int
    target: str
    sent: float
    indirect_at: float
    end: float
    acked: bool = False
    indirect: bool = False
    counted: bool = True  # the target was held alive when probed: the outcome says how reachable we are


class Detector:
    """One node's view of the others' liveness, and its probing."""

    def __init__(self, me: str, cfg: SwimConfig, rng: random.Random, now: float) -> None:
        self.me = me
        self.cfg = cfg
        self.rng = rng
        self.incarnation = 0
        self.peers: dict[str, PeerState] = {}
        self.order: list[str] = []
        self.idx = 0
        self.seq = 0
        self.probe: Probe | None = None
        self.forwards: dict[int, tuple[str, int, float]] = {}  # my seq -> (requester, its seq, expiry)
        self.suspicions: dict[str, Suspicion] = {}
        self._deadlines: list[tuple[float, str]] = []
        self.queue = BroadcastQueue()
        self.next_period = now + rng.random() * cfg.period  # stagger, as memberlist does
        self.last_ack = now  # send time of the newest probe answered (start: a fence window of grace)
        self.outcomes: list[bool] = []  # answered or not, for this node's last probes (newest last)
        self.n_alive = 1  # members held alive, this node included
        self.dead: set[str] = set()
        self.periods = 0
        self.events: list[tuple[str, str]] = []  # (kind, member): suspect, dead, alive, refute

    # ---- the member list (the ring's members) ---------------------------------------------------------
    def set_members(self, ids: list[str], now: float) -> None:
        keep = set(ids) - {self.me}
        for gone in set(self.peers) - keep:
            self.n_alive -= self.peers.pop(gone).state == ALIVE
            self.dead.discard(gone)
            self.suspicions.pop(gone, None)
        fresh = sorted(keep - set(self.peers))
        for new in fresh:
            self.peers[new] = PeerState(since=now)
            self.n_alive += 1
        if len(fresh) > len(self.order):  # mostly new (a joiner's first ring): one shuffle, a fresh round
            self.order += fresh
            self.rng.shuffle(self.order)
            self.idx = 0
        else:
            for new in fresh:
                self.order.insert(self.rng.randint(0, len(self.order)), new)
        if len(self.order) != len(self.peers):
            self.order = [p for p in self.order if p in self.peers]
            self.idx = min(self.idx, len(self.order))

    def n(self) -> int:
        return len(self.peers) + 1

    def state(self, node: str) -> str:
        if node == self.me:
            return ALIVE
        p = self.peers.get(node)
        return p.state if p is not None else DEAD

    def alive_count(self) -> int:
        return self.n_alive

    def _set(self, node: str, state: str, now: float) -> None:
        p = self.peers[node]
        if p.state != state:
            self.n_alive += (state == ALIVE) - (p.state == ALIVE)
            p.state, p.since = state, now
            if state == DEAD:
                self.dead.add(node)
            else:
                self.dead.discard(node)

    # ---- updates (memberlist's aliveNode / suspectNode / deadNode) ------------------------------------
    def apply(self, u: NodeUpdate, now: float) -> None:
        if u.node == self.me:
            if u.state != ALIVE or u.incarnation > self.incarnation:
                self._refute(u.incarnation)
            return
        p = self.peers.get(u.node)
        if p is None:
            return
        if u.state == ALIVE:
            if u.incarnation <= p.incarnation:
                return
            p.incarnation = u.incarnation
            self.suspicions.pop(u.node, None)
            if p.state != ALIVE:
                self._set(u.node, ALIVE, now)
                self.events.append(("alive", u.node))
            self.queue.push(u)
        elif u.state == SUSPECT:
            if u.incarnation < p.incarnation:
                return
            s = self.suspicions.get(u.node)
            if s is not None:
                if s.confirm(u.origin):
                    heapq.heappush(self._deadlines, (s.deadline, u.node))
                    self.queue.push(u)
                return
            if p.state != ALIVE:
                return
            self._suspect(u.node, u.incarnation, u.origin, now)
        else:
            if u.incarnation < p.incarnation:
                return
            self.suspicions.pop(u.node, None)
            if p.state == DEAD:
                return
            p.incarnation = u.incarnation
            self._set(u.node, DEAD, now)
            self.events.append(("dead", u.node))
            self.queue.push(u)

    def _suspect(self, node: str, inc: int, origin: str, now: float) -> None:
        p = self.peers[node]
        p.incarnation = inc
        self._set(node, SUSPECT, now)
        n = self.n()
        k = self.cfg.confirmations_wanted(n)
        lo, hi = self.cfg.suspicion_min(n), self.cfg.suspicion_max(n)
        s = Suspicion(start=now, k=k, min=lo, max=hi, deadline=now + (hi if k >= 1 else lo), confirmers={origin})
        self.suspicions[node] = s
        heapq.heappush(self._deadlines, (s.deadline, node))
        self.events.append(("suspect", node))
        self.queue.push(NodeUpdate(node=node, state=SUSPECT, incarnation=inc, origin=origin))

    def _refute(self, accused: int) -> None:
        self.incarnation = max(self.incarnation + 1, accused + 1)
        self.events.append(("refute", self.me))
        self.queue.push(NodeUpdate(node=self.me, state=ALIVE, incarnation=self.incarnation, origin=self.me))

    # ---- timers -------------------------------------------------------------------------------------------
    def next_timer(self) -> float:
        t = self.next_period
        if self.probe is not None:
            t = min(t, self.probe.end if self.probe.indirect or self.probe.acked else self.probe.indirect_at)
        while self._deadlines:
            d, node = self._deadlines[0]
            s = self.suspicions.get(node)
            if s is not None and s.deadline == d:
                return min(t, d)
            heapq.heappop(self._deadlines)
        return t

    def tick(self, now: float) -> list[tuple[str, str, int, str]]:
        """Run every timer due at `now`: the probes to send, as (to, "ping" | "ping-req", seq, target)."""
        out: list[tuple[str, str, int, str]] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            d, node = heapq.heappop(self._deadlines)
            s = self.suspicions.get(node)
            if s is None or s.deadline != d:
                continue
            del self.suspicions[node]
            p = self.peers[node]
            self.apply(NodeUpdate(node=node, state=DEAD, incarnation=p.incarnation, origin=self.me), now)
        pr = self.probe
        if pr is not None and not pr.acked and not pr.indirect and now >= pr.indirect_at:
            pr.indirect = True
            for h in self._helpers(pr.target):
                out.append((h, "ping-req", pr.seq, pr.target))
        if pr is not None and now >= pr.end:
            self.probe = None
            if pr.counted:
                self._outcome(pr.acked)
            p = self.peers.get(pr.target)
            if not pr.acked and p is not None and p.state != DEAD:  # a suspect one: we confirm it
                self.apply(NodeUpdate(node=pr.target, state=SUSPECT, incarnation=p.incarnation, origin=self.me), now)
        for seq in [s for s, (_, _, exp) in self.forwards.items() if exp <= now]:
            del self.forwards[seq]
        if now >= self.next_period:
            self.next_period += self.cfg.period
            if self.next_period <= now:  # we were held up (paused): start afresh, do not catch up
                self.next_period = now + self.cfg.period
            self.periods += 1
            if self.periods % self.cfg.reconnect_periods == 0:  # (Serf's reconnect) has a dead member come back?
                if self.dead:
                    self.seq += 1
                    lost = self.rng.choice(sorted(self.dead))
                    out.append((lost, "ping", self.seq, lost))
            target = self._next_target()
            if target is not None:
                self.seq += 1
                self.probe = Probe(seq=self.seq, target=target, sent=now, indirect_at=now + self.cfg.probe_timeout,
                                   end=now + self.cfg.period, counted=self.peers[target].state == ALIVE)
                out.append((target, "ping", self.seq, target))
        return out

    def _helpers(self, target: str) -> list[str]:
        """`indirect_checks` random members held alive, other than `target` (sampled, not scanned)."""
        k = self.cfg.indirect_checks
        pool = self.rng.sample(self.order, min(len(self.order), 4 * k + 4))
        got = [m for m in pool if m != target and self.peers[m].state == ALIVE][:k]
        if len(got) < k and len(pool) < len(self.order):
            alive = [m for m in self.order if m != target and self.peers[m].state == ALIVE]
            got = self.rng.sample(alive, min(k, len(alive)))
        return got

    def _outcome(self, answered: bool) -> None:
        self.outcomes.append(answered)
        if len(self.outcomes) > self.cfg.fence_probes:
            del self.outcomes[0]

    def reachable(self) -> bool:
        """At least a quarter of this node's last probes of members it held alive were answered."""
        return 4 * sum(self.outcomes) >= len(self.outcomes)

    def _next_target(self) -> str | None:
        for _ in range(2 * len(self.order) + 1):
            if self.idx >= len(self.order):
                self.rng.shuffle(self.order)
                self.idx = 0
                if not self.order:
                    return None
            m = self.order[self.idx]
            self.idx += 1
            if self.peers[m].state != DEAD:
                return m
        return None

    # ---- probe traffic -------------------------------------------------------------------------------------
    def on_ack(self, ack: Ack) -> tuple[str, int] | None:
        """An answer to our probe, or to one we made for another member (then: where to forward it)."""
        pr = self.probe
        if pr is not None and ack.seq == pr.seq and ack.about == pr.target:
            if not pr.acked:
                pr.acked = True
                self.last_ack = max(self.last_ack, pr.sent)
            return None
        fw = self.forwards.pop(ack.seq, None)
        if fw is not None:
            return fw[0], fw[1]
        return None

    def on_ping_req(self, req: PingReq, now: float) -> tuple[str, int]:
        """Probe `req.target` for `req.sender`: the ping to send (target, our seq)."""
        self.seq += 1
        self.forwards[self.seq] = (req.sender, req.seq, now + self.cfg.period)
        return req.target, self.seq

    def accepts_ping(self, ping: Ping) -> bool:
        return ping.target == self.me
