"""Faults on links: partitions (iptables in the kernel, or Toxiproxy in user space) and Toxiproxy's toxics.

Targets of a toxic: `nodes` (every link to and from each, the clients' links included) or `between`
(two names, "client" allowed: the links a->b and b->a), and a `direction` of the data ("in", "out",
"both"; see proxies.data_streams). Latency and the other toxics act on each direction of data they
are given, so `latency 200 ms, both` adds 200 ms each way: 400 ms to a round trip over that link.
"""

from __future__ import annotations

import threading
from typing import Any

from .backend import PARTITIONS, cut_links, groups_of
from .errors import HarnessError
from .fault import Fault


class Partition(Fault):
    """Cut links in the kernel: iptables DROP (packets vanish, connections hang until they time out)."""

    name = "partition"
    summary = "cut the network (halves, one, bridge, majorities-ring) with iptables DROP rules"
    via = "iptables"

    def shape(self) -> str:
        shape = self.params.get("shape") or self.rng.choice(PARTITIONS)
        if shape not in PARTITIONS:
            raise HarnessError(f"unknown partition {shape!r}; choose one of {', '.join(PARTITIONS)}")
        self.params["shape"] = shape
        return shape

    def _apply(self) -> None:
        shape = self.shape()
        self.links = cut_links(shape, self.cluster.nodes)
        self.sees = groups_of(shape, self.cluster.nodes)
        self.nodes = self._minority()
        self._cut()

    def _cut(self) -> None:
        self.cluster.cut(self.links)

    def _heal(self) -> None:
        self.cluster.uncut()

    def _minority(self) -> list[str]:
        """Nodes that see no majority (the ones the rest will declare dead)."""
        majority = len(self.cluster.nodes) // 2 + 1
        return [g[0] for g in self.sees if len(g) < majority]

    def _record_params(self) -> dict:
        return {**super()._record_params(), "via": self.via, "sees": self.sees}

    def describe(self) -> str:
        sees = "; ".join(f"{g[0]} sees {' '.join(g[1:]) or 'nobody'}" for g in getattr(self, "sees", []))
        return f"partition {self.params.get('shape', '?')} via {self.via}: {sees}"

    def down(self) -> set[str]:
        return set(self.nodes)


class ToxiPartition(Partition):
    """Cut links in user space: their proxies are disabled (connections closed, new ones refused)."""

    name = "partition-toxiproxy"
    summary = "cut the network by disabling the links' Toxiproxy proxies (connections refused)"
    needs_proxies = True
    via = "toxiproxy"

    def _cut(self) -> None:
        for link in sorted(self.links):
            self.cluster.proxies.set_enabled(link, False)

    def _heal(self) -> None:
        for link in sorted(self.links):
            self.cluster.proxies.set_enabled(link, True)


class Toxic(Fault):
    """A Toxiproxy toxic on the target's links; subclasses name the toxic type and its attributes."""

    needs_proxies = True
    toxic_type = ""
    default_direction = "both"

    def attributes(self) -> dict:
        raise NotImplementedError

    def targets(self) -> list[tuple[tuple[str, str], str]]:
        """(link, stream) pairs the toxic goes on."""
        from .proxies import data_streams  # noqa: PLC0415
        px = self.cluster.proxies
        direction = self.params.get("direction") or self.default_direction
        self.params["direction"] = direction
        between = self.params.get("between")
        if between:
            a, b = between
            return [(lk, s) for lk in px.between(a, b) for s in data_streams(lk, a, direction)]
        out = []
        for name in self.pick(1, keep_majority=False):
            out += [(lk, s) for lk in px.node_links(name) for s in data_streams(lk, name, direction)]
        return out

    def _apply(self) -> None:
        self.applied = []
        for link, stream in self.targets():
            toxic = f"{self.name}{self.uid}_{stream}"
            self.cluster.proxies.add_toxic(link, self.toxic_type, self.attributes(), stream=stream, name=toxic)
            self.applied.append((link, toxic))

    def _heal(self) -> None:
        for link, toxic in self.applied:
            self.cluster.proxies.remove_toxic(link, toxic)

    def where(self) -> str:
        between = self.params.get("between")
        where = f"between {between[0]} and {between[1]}" if between else f"on {', '.join(self.nodes)}'s links"
        return f"{where} ({self.params.get('direction', self.default_direction)})"


class Latency(Toxic):
    name = "latency"
    summary = "delay data on a node's links or between two nodes (ms each way, with jitter)"
    toxic_type = "latency"

    def attributes(self) -> dict:
        return {"latency": int(self.params.get("ms") or 200), "jitter": int(self.params.get("jitter") or 0)}

    def describe(self) -> str:
        a = self.attributes()
        return f"latency {a['latency']} ms" + (f" +-{a['jitter']} ms" if a["jitter"] else "") + f" {self.where()}"


class Bandwidth(Toxic):
    name = "bandwidth"
    summary = "limit a node's links (or two nodes' link) to a rate in KB/s"
    toxic_type = "bandwidth"

    def attributes(self) -> dict:
        return {"rate": int(self.params.get("rate_kb") or 64)}

    def describe(self) -> str:
        return f"bandwidth {self.attributes()['rate']} KB/s {self.where()}"


class Blackhole(Toxic):
    """Every link of the node hangs: it stays up, nothing it sends or is sent arrives (timeout 0)."""

    name = "blackhole"
    summary = "a node stays up but all its traffic hangs (Toxiproxy timeout 0)"
    toxic_type = "timeout"

    def attributes(self) -> dict:
        return {"timeout": 0}

    def describe(self) -> str:
        return f"blackhole {self.where()}"

    def down(self) -> set[str]:
        return set(self.nodes)


class Reset(Toxic):
    name = "reset"
    summary = "reset a node's connections (TCP RST) as data arrives, after an optional delay in ms"
    toxic_type = "reset_peer"

    def attributes(self) -> dict:
        return {"timeout": int(self.params.get("after_ms") or 0)}

    def describe(self) -> str:
        return f"connection reset {self.where()}"

    def down(self) -> set[str]:
        return set(self.nodes) if not self.params.get("between") else set()


class SlowClose(Toxic):
    name = "slow-close"
    summary = "delay the closing of a node's connections by ms"
    toxic_type = "slow_close"

    def attributes(self) -> dict:
        return {"delay": int(self.params.get("ms") or 1000)}

    def describe(self) -> str:
        return f"slow close {self.attributes()['delay']} ms {self.where()}"


class Flap(Fault):
    """The link between two nodes goes down and up again and again (each phase period/2..period long)."""

    name = "flap"
    summary = "take the link between two nodes down and up every period/2..period seconds"
    needs_proxies = True

    def _apply(self) -> None:
        between = self.params.get("between")
        if not between:
            between = self.params["between"] = tuple(self.pick(2, keep_majority=False))
        self.nodes = list(between)
        self.links = self.cluster.proxies.between(*between)
        self.flips = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"flap-{self.uid}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = float(self.params.get("period") or 2.0)
        up = True
        while True:
            wait = self.rng.uniform(period / 2, period)
            if self._stop.wait(wait):
                return
            up = not up
            for link in self.links:
                self.cluster.proxies.set_enabled(link, up)
            self.flips += 1

    def _heal(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for link in self.links:
            self.cluster.proxies.set_enabled(link, True)
        self.record["flips"] = self.flips

    def describe(self) -> str:
        b = self.params.get("between") or ("?", "?")
        return f"flapping link {b[0]} <-> {b[1]}, every {self.params.get('period') or 2.0:g} s at most"


def partition_class(via: str) -> type[Any]:
    return {"iptables": Partition, "toxiproxy": ToxiPartition}[via]
