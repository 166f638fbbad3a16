"""The simulated clock and network: one event queue, seeded delays and loss, partitions by group."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

Address = tuple[str, int]


@dataclass(frozen=True)
class NetConfig:
    delay_min: float = 0.0005   # seconds, one way
    delay_max: float = 0.005
    loss: float = 0.0           # probability that a message is lost


@dataclass
class Network:
    """Messages are delivered after a random delay unless lost, cut by a partition (checked on delivery, as
    iptables drops what is in flight) or addressed to a node that is down."""

    rng: random.Random
    cfg: NetConfig = field(default_factory=NetConfig)
    now: float = 0.0
    groups: dict[Address, int] = field(default_factory=dict)  # partition side per address; none: one network
    down: set[Address] = field(default_factory=set)
    sent: Counter = field(default_factory=Counter)       # (sender address, message kind) -> count
    received: Counter = field(default_factory=Counter)   # receiver address -> count
    dropped: int = 0
    _q: list = field(default_factory=list)
    _seq: int = 0

    def at(self, when: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._q, (when, self._seq, fn))

    def send(self, src: Address, dst: Address, msg: object, deliver: Callable[[Address, Address, object], None]) -> None:
        self.sent[(src, type(msg).__name__)] += 1
        if self.cfg.loss and self.rng.random() < self.cfg.loss:
            self.dropped += 1
            return
        delay = self.rng.uniform(self.cfg.delay_min, self.cfg.delay_max)
        self.at(self.now + delay, lambda: self._arrive(src, dst, msg, deliver))

    def _arrive(self, src: Address, dst: Address, msg: object, deliver) -> None:
        if dst in self.down or src in self.down or self.groups.get(src, 0) != self.groups.get(dst, 0):
            self.dropped += 1
            return
        self.received[dst] += 1
        deliver(src, dst, msg)

    def run_until(self, t: float) -> None:
        while self._q and self._q[0][0] <= t:
            when, _, fn = heapq.heappop(self._q)
            self.now = when
            fn()
        self.now = t

    def partition(self, sides: list[set[Address]]) -> None:
        self.groups = {a: i + 1 for i, side in enumerate(sides) for a in side}

    def heal(self) -> None:
        self.groups = {}

    def sent_by(self, addrs: set[Address] | None = None) -> int:
        return sum(c for (a, _), c in self.sent.items() if addrs is None or a in addrs)

    def kinds(self) -> Counter:
        out: Counter = Counter()
        for (_, kind), c in self.sent.items():
            out[kind] += c
        return out
