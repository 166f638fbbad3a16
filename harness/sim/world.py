"""A grid of `SwimMembership` nodes on the simulated network, driven exactly as a node shell would drive
one: messages in through `receive`, timers through `tick` at `next_timer()`, the returned sends put on the
network, the adopted rings recorded, and a removed node rejoining as a new incarnation."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from jobgrid.protocol import RingState
from jobgrid.swim import Step, SwimConfig, SwimMembership

from .net import Address, NetConfig, Network


@dataclass
class SimNode:
    base: str
    addr: Address
    mem: SwimMembership | None = None
    incarnation: int = 0
    wake_at: float = math.inf
    up: bool = True

    @property
    def id(self) -> str:
        return self.base if self.incarnation == 0 else f"{self.base}-{self.incarnation}"


@dataclass
class Adoption:
    at: float
    node: str
    epoch: int
    proposer: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


@dataclass
class World:
    seed: int
    swim: SwimConfig = field(default_factory=SwimConfig)
    net_cfg: NetConfig = field(default_factory=NetConfig)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.net = Network(random.Random(self.rng.random()), self.net_cfg)
        self.nodes: dict[Address, SimNode] = {}
        self.adoptions: list[Adoption] = []
        self.events: list[tuple[float, str, str, str]] = []  # (time, node, kind, subject)
        self.commits: dict[tuple[int, str], float] = {}      # ring key -> first commit time
        self.committed_by: dict[tuple[int, str], str] = {}
        self.removed_nodes: list[tuple[float, str]] = []

    @property
    def now(self) -> float:
        return self.net.now

    # ---- nodes ----------------------------------------------------------------------------------------
    def add_node(self, i: int) -> SimNode:
        n = SimNode(base=f"n{i:05d}", addr=("127.0.0.1", 20000 + i))
        self.nodes[n.addr] = n
        return n

    def _new_mem(self, n: SimNode) -> SwimMembership:
        return SwimMembership(n.id, n.addr, self.swim, random.Random(self.rng.random()), self.now)

    def found(self, n: SimNode) -> None:
        n.mem = self._new_mem(n)
        self._carry(n, n.mem.found(self.now))

    def join(self, n: SimNode, contacts: list[Address]) -> None:
        n.mem = self._new_mem(n)
        self._carry(n, n.mem.join(contacts, self.now))

    def crash(self, n: SimNode) -> None:
        n.up = False
        self.net.down.add(n.addr)

    # ---- the shell's loop ----------------------------------------------------------------------------------
    def _carry(self, n: SimNode, step: Step) -> None:
        mem = n.mem
        assert mem is not None
        for ring, change in step.adopted:
            self.adoptions.append(Adoption(self.now, mem.me, ring.epoch, ring.proposer,
                                           tuple(m.id for m in change.added), tuple(m.id for m in change.removed)))
        for kind, subject in step.events:
            self.events.append((self.now, mem.me, kind, subject))
            if kind == "committed":
                epoch, proposer = subject.split(":", 1)
                key = (int(epoch), proposer)
                self.commits.setdefault(key, self.now)
                self.committed_by.setdefault(key, mem.me)
        for s in step.send:
            self.net.send(n.addr, s.addr, s.msg, self._deliver)
        if step.removed and n.up:
            self.removed_nodes.append((self.now, mem.me))
            n.incarnation += 1
            self._carry(n, mem.rejoin(n.id, self.now))
            return
        self._schedule(n)

    def _schedule(self, n: SimNode) -> None:
        assert n.mem is not None
        t = n.mem.next_timer()
        if t <= self.now:
            t = self.now + 1e-6
        if t < n.wake_at or n.wake_at <= self.now:
            n.wake_at = t
            self.net.at(t, lambda: self._wake(n, t))

    def _wake(self, n: SimNode, t: float) -> None:
        if not n.up or n.wake_at != t or n.mem is None:
            return
        n.wake_at = math.inf
        self._carry(n, n.mem.tick(self.now))

    def _deliver(self, src: Address, dst: Address, msg: object) -> None:
        n = self.nodes.get(dst)
        if n is None or not n.up or n.mem is None:
            return
        self._carry(n, n.mem.receive(msg, self.now))  # type: ignore[arg-type]

    def run(self, seconds: float) -> None:
        self.net.run_until(self.now + seconds)

    def run_periods(self, periods: float) -> None:
        self.run(periods * self.swim.period)

    # ---- what every node holds -------------------------------------------------------------------------
    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.up and n.mem is not None]

    def converged(self) -> bool:
        """One ring everywhere: every live node holds the same ring key and members, and those members are
        exactly the live nodes (current incarnations)."""
        live = self.live()
        if len(live) != sum(1 for n in self.nodes.values() if n.up):
            return False  # some node has not even started
        if not live:
            return True
        ring = live[0].mem.ring  # type: ignore[union-attr]
        ids = {m.id for m in ring.members}
        return ids == {n.id for n in live} and all(
            n.mem.ring.key() == ring.key() and {m.id for m in n.mem.ring.members} == ids for n in live)  # type: ignore[union-attr]

    def run_until_converged(self, max_periods: float, step_periods: float = 0.25) -> float | None:
        """Periods until `converged()` (checked every `step_periods`); None if not within `max_periods`."""
        start = self.now
        while self.now - start < max_periods * self.swim.period:
            if self.converged():
                return (self.now - start) / self.swim.period
            self.run_periods(step_periods)
        return (self.now - start) / self.swim.period if self.converged() else None

    def ring_views(self) -> dict[tuple[int, str], int]:
        views: dict[tuple[int, str], int] = defaultdict(int)
        for n in self.live():
            views[n.mem.ring.key()] += 1  # type: ignore[union-attr]
        return dict(views)

    def common_ring(self) -> RingState | None:
        return self.live()[0].mem.ring if self.converged() and self.live() else None  # type: ignore[union-attr]
