"""`SwimMembership`: the all-to-all `Membership`'s views and ring semantics, with SWIM underneath.

The node shell drives it like today's `Membership`: it feeds messages (`receive(msg, now)`) and timers
(`tick(now)`, due at `next_timer()`) and carries out the returned `Step`: messages to send, rings
adopted (each with its `RingChange`, exactly what `Membership.adopt` returns), and whether this node
was removed (rejoin as a new incarnation: `rejoin`). Views are unchanged: `members`, `successors`,
`promoter_for`, `status`, `leader`, `has_quorum`, `adopt`, `ring_problem`.

Ring semantics kept: rings are keyed (epoch, proposer) and adopted only upwards; only the leader (lowest
position not dead) changes the ring, and only while it has quorum; every change is committed by a
majority of the ring before it (rounds.py), so a minority side never removes or admits anyone, never
promotes, and two sides can never commit different rings for one epoch, whatever each side believes.

Quorum (what a node serves by: accepts, leases, records) is quorum.py's rule and argument.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from ..membership import Membership, RingChange
from ..protocol import Member, RingState
from . import quorum
from .config import SwimConfig
from .detector import DEAD, SUSPECT, Detector
from .joins import Joiner, JoinQueue, place
from .messages import (
    Accept, Accepted, Ack, JoinRedirect, JoinReply, JoinRequest, NodeUpdate, Ping, PingReq, Prepare, Promise,
    RingDelta, RingPull, RingPush, SwimMessage,
)
from .rounds import Acceptor, Round

Address = tuple[str, int]


@dataclass(frozen=True)
class Send:
    """Send `msg` to the node at `addr` (`to`: its id, "" for a join contact known by address only)."""

    to: str
    addr: Address
    msg: SwimMessage


@dataclass
class Step:
    send: list[Send] = field(default_factory=list)
    adopted: list[tuple[RingState, RingChange]] = field(default_factory=list)  # in order; persist each
    events: list[tuple[str, str]] = field(default_factory=list)  # (kind, subject) for the logs
    removed: bool = False  # a ring without this node was adopted: rejoin as a new incarnation
    votes: tuple | None = None  # this node's votes changed: persist them (restore_votes) before sending


class SwimMembership(Membership):
    def __init__(self, me: str, address: Address, cfg: SwimConfig, rng: random.Random, now: float,
                 replicas: int = 3, ring: RingState | None = None) -> None:
        super().__init__(me=me, ring=RingState(epoch=0, members=[]), replicas=replicas,
                         failure_timeout=cfg.suspicion_min(1), fence_window=cfg.fence_window(1),
                         started=now)
        self.address = address
        self.cfg = cfg
        self.rng = rng
        self.det = Detector(me, cfg, rng, now)
        self.acceptor = Acceptor(slot=1)
        self.round: Round | None = None
        self.round_no = 0
        self.joins = JoinQueue()
        self.joiner: Joiner | None = None
        self.addresses: dict[str, Address] = {}
        self.queued = 0  # this node's queued jobs, told to peers on probe traffic (set by the shell)
        self._sorted: tuple[tuple[int, str], list[Member], list[int]] = ((-1, ""), [], [])
        self._index: tuple[tuple[int, str], dict[str, Member]] = ((-1, ""), {})
        self._behind: tuple[float, str] | None = None  # since when, and who is ahead
        self._behind_epoch = 0
        self._retry_at = float("-inf")
        self._retry_pending = False  # a round is to be tried again at _retry_at
        self._last_delta: RingDelta | None = None  # the change that made our ring, if we learnt it as one
        self._pulled_at = float("-inf")
        self._pulled_from = ""
        self._step = Step()
        if ring is not None:  # the ring a node resumes with: adopted, not reported as a change
            self.adopt(ring, now)
            self._step = Step()

    # ---- views -------------------------------------------------------------------------------------
    @property
    def members(self) -> list[Member]:
        return self._by_location()[0]

    def _by_location(self) -> tuple[list[Member], list[int]]:
        if self._sorted[0] != self.ring.key():
            ms = sorted(self.ring.members, key=lambda m: m.location)
            self._sorted = (self.ring.key(), ms, [m.location for m in ms])
        return self._sorted[1], self._sorted[2]

    def member(self, node_id: str) -> Member | None:
        if self._index[0] != self.ring.key():
            self._index = (self.ring.key(), {m.id: m for m in self.ring.members})
        return self._index[1].get(node_id)

    def successors(self, node_id: str, count: int | None = None) -> list[Member]:
        """As `Membership.successors`, by bisection on the sorted ring (a ring of thousands changes often)."""
        m = self.member(node_id)
        if m is None:
            return []
        ms, locs = self._by_location()
        n = min(self.replicas - 1 if count is None else count, len(ms) - 1)
        i = bisect.bisect_right(locs, m.location)
        return [ms[(i + j) % len(ms)] for j in range(max(0, n))]

    def status(self, node_id: str, now: float) -> str:
        return self.det.state(node_id) if node_id == self.me or node_id in self.det.peers else "dead"

    def has_quorum(self, now: float) -> bool:
        return quorum.fence_reason(self, now) is None

    def leader(self, now: float) -> str | None:
        for m in self.members:
            if self.det.state(m.id) != DEAD:
                return m.id
        return None

    def propose_removals(self, now: float) -> RingState | None:
        """Never: with SWIM the leader removes members through a majority round (`tick`)."""
        return None

    def next_timer(self) -> float:
        t = self.det.next_timer() if self.is_member else float("inf")
        if self.round is not None:
            t = min(t, self.round.deadline)
        elif self._retry_pending:
            t = min(t, self._retry_at)
        if self.joiner is not None and not self.is_member:
            t = min(t, self.joiner.next_try)
        if self._behind is not None and self.is_member:
            t = min(t, max(self._behind[0], self._pulled_at) + self.cfg.pull_periods * self.cfg.period)
        return t

    # ---- rings -------------------------------------------------------------------------------------
    def adopt(self, new: RingState, now: float) -> RingChange | None:
        was = self.is_member
        change = super().adopt(new, now)
        if change is None:
            return None
        for m in (new.members if not was else change.added):
            self.addresses[m.id] = (m.ip, m.port)
        self.det.set_members([m.id for m in new.members], now)
        self.acceptor.moved_to(new.epoch + 1)
        if self.round is not None and self.round.slot <= new.epoch:
            self.round = None
        self.joins.admitted([m.id for m in change.added])
        if self._behind is not None and (self.ring.epoch >= self._behind_epoch or not change.i_am_member):
            self._behind = None
        if change.i_am_member and not was:
            self.joiner = None
            self.det.last_ack = now
            self.det.next_period = now + self.rng.random() * self.cfg.period
        self._step.adopted.append((new, change))
        if was and not change.i_am_member:
            self._step.removed = True
        return change

    def _take(self, new: RingState, now: float) -> bool:
        """Adopt a ring that came from elsewhere, if it is newer and keeps every ring invariant."""
        if new.key() <= self.ring.key():
            return False
        self._last_delta = None
        why = self.ring_problem(new, self.address)
        if why is not None:
            self._step.events.append(("ring_refused", why))
            return False
        return self.adopt(new, now) is not None

    def restore_votes(self, votes: tuple) -> None:
        """After a restart: the votes last persisted (`Step.votes`), if they are for the slot after our ring."""
        slot, promised, accepted_ballot, accepted = votes
        if slot == self.ring.epoch + 1:
            self.acceptor = Acceptor(slot=slot, promised=tuple(promised), accepted_ballot=tuple(accepted_ballot),
                                     accepted=accepted)

    def found(self, now: float, location: int = 0, epoch: int = 1) -> Step:
        """Start a new grid: a ring of this node alone."""
        self.adopt(RingState(epoch=epoch, members=[Member(id=self.me, location=location, ip=self.address[0],
                                                          port=self.address[1])], proposer=self.me), now)
        return self._done()

    def join(self, contacts: list[Address], now: float) -> Step:
        """Ask to be admitted, through any of `contacts` (a member redirects to its leader)."""
        self.joiner = Joiner(contacts=list(contacts), retry=self.cfg.join_retry_periods * self.cfg.period,
                             next_try=now)
        return self.tick(now)

    def rejoin(self, new_id: str, now: float) -> Step:
        """Removed while alive: come back as a new incarnation through the members of the ring that removed us."""
        old = self.ring
        self.me = new_id
        self.det = Detector(new_id, self.cfg, self.rng, now)
        self.acceptor = Acceptor(slot=old.epoch + 1)
        self.round, self.joins, self._behind = None, JoinQueue(), None
        contacts = [(m.ip, m.port) for m in self.members]
        return self.join(contacts, now)

    # ---- timers --------------------------------------------------------------------------------------
    def tick(self, now: float) -> Step:
        if self.is_member:
            for to, kind, seq, target in self.det.tick(now):
                if kind == "ping":
                    self._ping(to, seq, target)
                else:
                    self._send(to, PingReq(**self._hdr(), seq=seq, target=target, updates=self._gossip()))
            if self.round is not None and now >= self.round.deadline:
                self._give_up(self.round, now)
            if now >= self._retry_at:
                self._retry_pending = False
                self._lead(now)
            if self._behind is not None:
                self._maybe_pull(now)
        elif self.joiner is not None:
            addr = self.joiner.due(now)
            if addr is not None:
                self._send("", JoinRequest(**self._hdr()), addr)
        return self._done()

    def _lead(self, now: float) -> None:
        """The leader with quorum starts a round for the dead members and waiting joiners."""
        if self.round is not None or self.leader(now) != self.me or not self.has_quorum(now):
            return
        dead = sorted(self.det.dead)
        joiners = self.joins.batch(self.cfg.join_batch, lambda nid: self.member(nid) is not None)
        if not dead and not joiners:
            return
        delta = RingDelta(base_epoch=self.ring.epoch, base_proposer=self.ring.proposer, epoch=self.ring.epoch + 1,
                          proposer=self.me, added=place(self.ring, set(dead), joiners), removed=dead)
        self.round_no += 1
        rnd = self.round = Round(base=self.ring, ballot=(self.round_no, self.me), proposal=delta,
                                 deadline=now + self.cfg.round_periods * self.cfg.period)
        self._step.events.append(("round", f"{rnd.slot}:{len(dead)}-{len(joiners)}+"))
        for m in self.ring.members:
            if m.id != self.me and self.det.state(m.id) != DEAD:
                self._send(m.id, Prepare(**self._hdr(), slot=rnd.slot, round=self.round_no, catchup=self._last_delta))
        ok = self.acceptor.prepare(rnd.slot, rnd.ballot)
        if ok:
            self._step.votes = self.acceptor.state()
        value = rnd.on_promise(self.me, ok, self.acceptor.accepted_ballot, self.acceptor.accepted,
                               self.acceptor.promised)
        if value is not None:
            self._accept_phase(rnd, now)

    def _give_up(self, rnd: Round, now: float) -> None:
        """A round that cannot succeed: try again (with a higher ballot) after one probe timeout, by when
        voters that were behind (joiners whose welcome was still in flight) have caught up."""
        self._step.events.append(("round_abandoned", str(rnd.slot)))
        self.round_no = max(self.round_no, rnd.refused_by[0])
        self.round = None
        self._pause_rounds(now)

    def _pause_rounds(self, now: float) -> None:
        self._retry_at, self._retry_pending = now + self.cfg.probe_timeout, True

    def _accept_phase(self, rnd: Round, now: float) -> None:
        assert rnd.value is not None
        for m in rnd.base.members:
            if m.id != self.me and self.det.state(m.id) != DEAD:
                self._send(m.id, Accept(**self._hdr(), slot=rnd.slot, round=rnd.ballot[0], value=rnd.value,
                                        catchup=self._last_delta))
        ok = self.acceptor.accept(rnd.slot, rnd.ballot, rnd.value)
        if ok:
            self._step.votes = self.acceptor.state()
        if rnd.on_accepted(self.me, ok, self.acceptor.promised):
            self._commit(rnd, now)

    def _commit(self, rnd: Round, now: float) -> None:
        assert rnd.value is not None
        value, new = rnd.value, rnd.value.apply(rnd.base)
        self.round = None
        if not self._take(new, now):
            return
        self._step.events.append(("committed", f"{new.epoch}:{new.proposer}"))
        self._last_delta = value
        self.det.queue.push(value)
        for m in value.added:
            self._send(m.id, JoinReply(**self._hdr(), ring=new), (m.ip, m.port))
        self._pause_rounds(now)  # the next round once the newcomers have their welcome and can vote

    # ---- messages ------------------------------------------------------------------------------------
    def receive(self, msg: SwimMessage, now: float) -> Step:
        if msg.sender == self.me:
            return self._done()
        self.addresses[msg.sender] = (msg.ip, msg.port)
        voting = isinstance(msg, (Prepare, Accept))
        news = msg.updates if isinstance(msg, (Ping, Ack, PingReq)) else [msg.catchup] if voting else []
        for u in news if self.is_member else ():
            if isinstance(u, NodeUpdate):
                self.det.apply(u, now)
            elif u is not None:
                self._on_delta(u, msg.sender, now)
        getattr(self, "_on_" + type(msg).__name__.lower())(msg, now)
        if msg.ring_key() > self.ring.key() and self.is_member:
            # behind since when (a vote waiting on us: at once, no time for gossip), and who is ahead
            since = float("-inf") if voting else now if self._behind is None else self._behind[0]
            self._behind, self._behind_epoch = (since, msg.sender), max(self._behind_epoch, msg.epoch)
            self._maybe_pull(now)
        return self._done()

    def _on_delta(self, d: RingDelta, sender: str, now: float) -> None:
        if d.base_key() == self.ring.key():
            if self._take(d.apply(self.ring), now):
                self._last_delta = d
                self.det.queue.push(d)  # infection style: what we learn, we pass on

    def _maybe_pull(self, now: float) -> None:
        """Behind for `pull_periods` (gossip did not bring the change): ask a node that is ahead."""
        assert self._behind is not None
        since, who = self._behind
        wait = self.cfg.pull_periods * self.cfg.period
        if now - since >= wait and now - self._pulled_at >= wait:
            self._pulled_at, self._pulled_from = now, who
            self._send(who, RingPull(**self._hdr()))

    def _on_ping(self, msg: Ping, now: float) -> None:
        self.heard[msg.sender] = now
        self.active[msg.sender] = msg.active
        if msg.target == self.me:
            self._send(msg.sender, Ack(**self._hdr(), seq=msg.seq, about=self.me, updates=self._gossip(),
                                       active=self.queued))

    def _on_ack(self, msg: Ack, now: float) -> None:
        self.heard[msg.sender] = now
        if msg.about == msg.sender:
            self.active[msg.sender] = msg.active
        fw = self.det.on_ack(msg)
        if fw is not None:
            self._send(fw[0], Ack(**self._hdr(), seq=fw[1], about=msg.about, updates=self._gossip()))

    def _on_pingreq(self, msg: PingReq, now: float) -> None:
        target, seq = self.det.on_ping_req(msg, now)
        self._ping(target, seq, target)

    def _on_prepare(self, msg: Prepare, now: float) -> None:
        self.round_no = max(self.round_no, msg.round)
        a = self.acceptor
        ok = msg.ring_key() == self.ring.key() and self.is_member and a.prepare(msg.slot, (msg.round, msg.sender))
        if ok:
            self._step.votes = a.state()
        self._send(msg.sender, Promise(**self._hdr(), slot=msg.slot, round=msg.round, leader=msg.sender, ok=ok,
                                       promised_round=a.promised[0], promised_leader=a.promised[1],
                                       accepted_round=a.accepted_ballot[0], accepted_leader=a.accepted_ballot[1],
                                       accepted=a.accepted if ok else None))

    def _on_promise(self, msg: Promise, now: float) -> None:
        self.round_no = max(self.round_no, msg.promised_round)
        rnd = self.round
        if rnd is None or msg.slot != rnd.slot or (msg.round, msg.leader) != rnd.ballot:
            return
        if rnd.on_promise(msg.sender, msg.ok, (msg.accepted_round, msg.accepted_leader), msg.accepted,
                          (msg.promised_round, msg.promised_leader)) is not None:
            self._accept_phase(rnd, now)
        elif rnd.hopeless():
            self._give_up(rnd, now)

    def _on_accept(self, msg: Accept, now: float) -> None:
        ok = (msg.ring_key() == self.ring.key() and self.is_member
              and self.acceptor.accept(msg.slot, (msg.round, msg.sender), msg.value))
        if ok:
            self._step.votes = self.acceptor.state()
        self._send(msg.sender, Accepted(**self._hdr(), slot=msg.slot, round=msg.round, leader=msg.sender, ok=ok))

    def _on_accepted(self, msg: Accepted, now: float) -> None:
        rnd = self.round
        if rnd is not None and msg.slot == rnd.slot and (msg.round, msg.leader) == rnd.ballot:
            if rnd.on_accepted(msg.sender, msg.ok):
                self._commit(rnd, now)
            elif rnd.hopeless():
                self._give_up(rnd, now)

    def _on_ringpull(self, msg: RingPull, now: float) -> None:
        if self.ring.members:
            self._send(msg.sender, RingPush(**self._hdr(), ring=self.ring))

    def _on_ringpush(self, msg: RingPush, now: float) -> None:
        """A ring from a member of ours, from the node we pulled from, or (joining) one that lists us."""
        if (self.member(msg.sender) is not None or msg.sender == self._pulled_from
                or (self.joiner is not None and any(m.id == self.me for m in msg.ring.members))):
            self._take(msg.ring, now)
        else:
            self._step.events.append(("ring_refused", f"pushed by {msg.sender}, neither a member nor asked"))

    def _on_joinrequest(self, msg: JoinRequest, now: float) -> None:
        if not self.is_member:
            return
        if self.member(msg.sender) is not None:
            self._send(msg.sender, JoinReply(**self._hdr(), ring=self.ring))
            return
        lead = self.leader(now)
        if lead == self.me:
            if self.has_quorum(now):
                self.joins.add(msg.sender, msg.ip, msg.port)
                self._step.events.append(("join_queued", msg.sender))
                if now >= self._retry_at:
                    self._lead(now)
        elif lead is not None:
            leader = self.member(lead)
            assert leader is not None
            self._send(msg.sender, JoinRedirect(**self._hdr(), leader=leader))

    def _on_joinredirect(self, msg: JoinRedirect, now: float) -> None:
        if self.joiner is not None and not self.is_member:
            addr = self.joiner.redirected(msg.leader, now)
            self._send(msg.leader.id, JoinRequest(**self._hdr()), addr)

    def _on_joinreply(self, msg: JoinReply, now: float) -> None:
        if self.is_member or any(m.id == self.me for m in msg.ring.members):
            self._take(msg.ring, now)

    # ---- helpers -----------------------------------------------------------------------------------------
    def _hdr(self) -> dict:
        return {"sender": self.me, "ip": self.address[0], "port": self.address[1], "epoch": self.ring.epoch,
                "proposer": self.ring.proposer}

    def _send(self, to: str, msg: SwimMessage, addr: Address | None = None) -> None:
        addr = addr or self.addresses.get(to)
        if addr is not None:
            self._step.send.append(Send(to=to, addr=addr, msg=msg))

    def _gossip(self) -> list:
        return self.det.queue.take(self.cfg.retransmit_limit(self.det.n()), self.cfg.max_piggyback)

    def _ping(self, to: str, seq: int, target: str) -> None:
        ups = self._gossip()
        p = self.det.peers.get(target)
        if p is not None and p.state == SUSPECT:  # tell it, so that it can refute at once
            ups = [NodeUpdate(node=target, state=SUSPECT, incarnation=p.incarnation, origin=self.me), *ups]
        self._send(to, Ping(**self._hdr(), seq=seq, target=target, updates=ups, active=self.queued))

    def _done(self) -> Step:
        step, self._step = self._step, Step()
        step.events.extend(self.det.events)
        self.det.events.clear()
        return step
