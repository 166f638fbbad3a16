"""One fault interface for every way the harness breaks a cluster (Jepsen's nemesis as a value).

A fault is made with its parameters and targets (or an `rng` to choose targets when applied), then
`apply()` injects it and returns the record the run keeps, `heal()` undoes it, and `describe()` says in
one line what it did. `harness chaos`, the nemesis of `harness run` and the scenario tests all build
faults from the one registry in harness/faults.py; a new kind of fault is one new subclass there.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from .errors import HarnessError

_ids = itertools.count(1)


class Fault:
    """Base of every fault kind. Subclasses set `name` and `summary` and write `_apply` and `_heal`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_proxies: ClassVar[bool] = False   # needs a cluster whose links pass Toxiproxy
    changes_nodes: ClassVar[bool] = False   # kills or pauses nodes (the nemesis spaces these out)

    def __init__(self, cluster: Any, *, rng: random.Random | None = None, nodes: Sequence[str] | None = None,
                 **params: Any) -> None:
        if self.needs_proxies and getattr(cluster, "proxies", None) is None:
            raise HarnessError(f"the {self.name} fault needs a cluster whose links pass Toxiproxy "
                               "(harness up/run --links toxiproxy)")
        self.cluster = cluster
        self.rng = rng or random.Random()
        self.nodes = list(nodes) if nodes else []
        self.params = params
        self.uid = next(_ids)
        self.active = False
        self.record: dict[str, Any] = {}

    # ---- the interface ---------------------------------------------------------------------------------
    def apply(self) -> dict:
        """Inject the fault; returns its record (kind, nodes, parameters, description, time)."""
        if self.active:
            raise HarnessError(f"{self.describe()} is already applied")
        self._apply()
        self.active = True
        self.record = {"kind": self.name, "nodes": list(self.nodes), **self._record_params(),
                       "description": self.describe(), "at": time.time()}
        self.cluster.faults.append(self.record)
        return self.record

    def heal(self) -> None:
        """Undo the fault (safe to call when it is not applied)."""
        if not self.active:
            return
        self._heal()
        self.active = False
        self.cluster.faults.append({"kind": "heal", "of": self.name, "nodes": list(self.nodes), "at": time.time()})

    def describe(self) -> str:
        return f"{self.name} {' '.join(self.nodes)}".strip()

    def down(self) -> set[str]:
        """Nodes this fault takes away from the rest while it is active (for the nemesis's majority rule)."""
        return set()

    # ---- for subclasses ----------------------------------------------------------------------------------
    def _apply(self) -> None:
        raise NotImplementedError

    def _heal(self) -> None:
        raise NotImplementedError

    def _record_params(self) -> dict:
        return {k: v for k, v in self.params.items() if v is not None}

    def node(self, name: str) -> Any:
        for n in self.cluster.nodes:
            if n.name == name:
                return n
        raise HarnessError(f"no node {name!r}; nodes: {', '.join(n.name for n in self.cluster.nodes)}")

    def pick(self, count: int, *, keep_majority: bool = True) -> list[str]:
        """`self.nodes` if given, else `count` live nodes at random, never so many that no majority is left."""
        if self.nodes:
            return self.nodes
        live = [n.name for n in self.cluster.live()]
        limit = len(live) - (len(self.cluster.nodes) // 2 + 1) if keep_majority else len(live) - 1
        if count > limit:
            raise HarnessError(f"refusing to take {count} of {len(live)} live nodes: a majority of the "
                               f"{len(self.cluster.nodes)} must stay up")
        self.nodes = sorted(self.rng.sample(live, count))
        return self.nodes
