"""What every harness backend offers, and the fault helpers shared by both.

Both `harness.local.LocalCluster` (processes on 127.0.0.x) and `harness.docker_backend.DockerCluster`
(containers on an internal bridge network) implement `Backend`. Partitions are expressed here as a set
of cut links ("a cannot talk to b, both ways"), which covers non-transitive shapes such as a bridge or
a ring of majorities, not only disjoint groups.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from .errors import HarnessError

PARTITIONS = ("halves", "one", "bridge", "majorities-ring")


@runtime_checkable
class NodeLike(Protocol):
    name: str
    host: str
    port: int
    state: str
    node_id: str

    @property
    def url(self) -> str: ...


@runtime_checkable
class Backend(Protocol):
    backend: str
    nodes: list
    token: str | None
    faults: list[dict]

    def add_node(self) -> Any: ...
    def start(self, node: Any, join: Any = None) -> Any: ...
    def up(self, n: int, *, timeout: float = 60.0, together: bool = False) -> list: ...
    def live(self) -> list: ...
    def get(self, node: Any, path: str, timeout: float = 2.0) -> dict | list: ...
    def healthy(self, node: Any) -> bool: ...
    def wait_healthy(self, node: Any, timeout: float = 30.0) -> None: ...
    def converged(self, nodes: Sequence[Any] | None = None) -> bool: ...
    def wait_converged(self, timeout: float = 30.0, nodes: Sequence[Any] | None = None) -> float: ...
    def states(self) -> dict[str, dict]: ...
    def kill(self, node: Any) -> None: ...
    def pause(self, node: Any) -> None: ...
    def resume(self, node: Any) -> None: ...
    def restart(self, node: Any, timeout: float = 60.0) -> None: ...
    def restart_many(self, nodes: Sequence[Any], timeout: float = 60.0) -> None: ...
    def restart_all(self, timeout: float = 120.0) -> None: ...
    def cut(self, links: set[tuple[str, str]]) -> None: ...
    def uncut(self) -> None: ...
    def heal(self) -> None: ...
    def client_urls(self) -> list[str]: ...
    def stop(self) -> None: ...
    def log_tail(self, node: Any, lines: int = 30) -> str: ...


def wait_for(cond: Callable[[], Any], timeout: float, what: str, *, step: float = 0.05,
             error: type[Exception] = HarnessError) -> Any:
    """Poll `cond` until it returns something truthy; raise `error` naming `what` at the deadline."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = cond()
        if last:
            return last
        time.sleep(step)
    raise error(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class ClusterBase:
    """What both backends share: starting a grid, and reading its state over HTTP.

    Subclasses provide `nodes`, `add_node`, `start`, `get` and `wait_healthy`, plus the faults.
    """

    nodes: list
    poll_interval = 0.05
    proxies: Any = None   # a harness.proxies.ProxyNet when every link passes Toxiproxy (links="toxiproxy")

    def up(self, n: int, *, timeout: float = 60.0, together: bool = False) -> list:
        """Start `n` nodes: the first at ring position 0, the others joining through it."""
        fresh = [self.add_node() for _ in range(n)]  # type: ignore[attr-defined]
        self.setup_links()
        first = self.start(fresh[0])  # type: ignore[attr-defined]
        self.wait_healthy(first, timeout)  # type: ignore[attr-defined]
        others = fresh[1:]
        for node in others:
            self.start(node, join=first)  # type: ignore[attr-defined]
            if not together:
                self.wait_healthy(node, timeout)  # type: ignore[attr-defined]
        for node in others:
            self.wait_healthy(node, timeout)  # type: ignore[attr-defined]
        self.wait_converged(timeout)
        return self.nodes

    def live(self) -> list:
        return [n for n in self.nodes if n.state == "running"]

    def setup_links(self) -> None:
        """Backends that route links through Toxiproxy create the proxies here, before any node starts."""

    def client_urls(self) -> list[str]:
        """The addresses clients use: each node's client proxy when links pass Toxiproxy, else the node."""
        return [self.dial_address(n) for n in self.nodes]

    def dial_address(self, node: Any) -> str:
        """The address clients use for this node: its client proxy when links pass Toxiproxy, else its own."""
        if self.proxies is None:
            return node.url
        return self.proxies.client_url(node, node.url.split("://")[0])

    def heal(self) -> None:
        """Remove every partition rule and every toxic; enable every proxy."""
        self.uncut()  # type: ignore[attr-defined]
        if self.proxies is not None:
            self.proxies.clear()
        self._fault("heal")

    def restart_all(self, timeout: float = 120.0, stagger: float = 0.0) -> None:
        """SIGKILL every node still up, then start them all on their data, none told whom to join: they
        must find each other from the ring they stored (a power cut and a cold start). `stagger`: seconds
        between one node's start and the next (0: all at once; nodes wait for a majority of their ring)."""
        for n in self.nodes:
            if n.state in ("running", "paused"):
                if n.state == "paused":
                    self.resume(n)  # type: ignore[attr-defined]
                self.kill(n)  # type: ignore[attr-defined]
        for i, n in enumerate(self.nodes):
            if i and stagger > 0:
                time.sleep(stagger)  # the schedule of the restart itself, not a wait for a condition
            self.start(n, join=None)  # type: ignore[attr-defined]
        for n in self.nodes:
            self.wait_healthy(n, timeout)  # type: ignore[attr-defined]
        self._fault("restart-all", stagger=stagger)

    def _fault(self, kind: str, node: Any = None, **extra: Any) -> None:
        """Record a fault injected now (the run's verdict and plots read `faults`)."""
        rec: dict[str, Any] = {"kind": kind}
        if node is not None:
            rec["node"] = node.name
        self.faults.append({**rec, **extra, "at": time.time()})  # type: ignore[attr-defined]

    def restart(self, node: Any, timeout: float = 60.0) -> None:
        """Start a killed node again on its data (dir or volume), joining through a live node."""
        self.restart_many([node], timeout)

    def restart_many(self, nodes: Sequence[Any], timeout: float = 60.0) -> None:
        """Start killed nodes again together (each joining through a node that is up), then wait for all."""
        contact = next((n for n in self.live() if n not in nodes), None)
        past = self.__dict__.setdefault("past_ids", {})  # a restarted node gets a new id: keep the old name
        for node in nodes:
            if node.node_id:
                past[node.node_id] = node.name
            self.start(node, join=contact)  # type: ignore[attr-defined]
        for node in nodes:
            self.wait_healthy(node, timeout)  # type: ignore[attr-defined]
            self._fault("restart", node)

    def healthy(self, node: Any) -> bool:
        try:
            return bool(self.get(node, "/healthz", 1.0).get("ok"))  # type: ignore[attr-defined]
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def _get_each(self, nodes: Iterable[Any], path: str) -> dict[str, Any]:
        out = {}
        for n in nodes:
            try:
                out[n.name] = self.get(n, path)  # type: ignore[attr-defined]
            except (OSError, urllib.error.URLError, ValueError):
                pass
        return out

    def server_lists(self, nodes: Iterable[Any] | None = None) -> dict[str, dict]:
        return self._get_each(nodes if nodes is not None else self.live(), "/servers")

    def states(self) -> dict[str, dict]:
        return self._get_each(self.live(), "/state")

    def converged(self, nodes: Sequence[Any] | None = None) -> bool:
        """Every given live node reports the same ring, made of exactly the given nodes."""
        nodes = list(nodes) if nodes is not None else self.live()
        lists = self.server_lists(nodes)
        if len(lists) != len(nodes):
            return False
        want = {(n.host, n.port) for n in nodes}
        views = set()
        for sl in lists.values():
            members = frozenset((s["ip"], s["port"], s["id"], s["location"]) for s in sl["servers"])
            if {(m[0], m[1]) for m in members} != want:
                return False
            views.add((sl["epoch"], members))
        return len(views) == 1

    def wait_converged(self, timeout: float = 30.0, nodes: Sequence[Any] | None = None) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.converged(nodes):
                past = self.__dict__.setdefault("past_ids", {})  # a node that rejoined has a new id
                for n in nodes if nodes is not None else self.live():
                    if n.node_id:
                        past[n.node_id] = n.name
                    n.node_id = self.get(n, "/state")["id"]  # type: ignore[attr-defined]
                return time.monotonic() - start
            time.sleep(self.poll_interval)
        raise HarnessError(f"ring did not converge within {timeout} s: {self.server_lists(nodes)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()  # type: ignore[attr-defined]


# ---- partition shapes ---------------------------------------------------------------------------------
def cut_links(kind: str, nodes: Sequence[Any]) -> set[tuple[str, str]]:
    """The links (pairs of node names, both orders) a partition of this kind cuts."""
    names = [n.name for n in nodes]
    k = len(names)
    if k < 2:
        raise HarnessError("a partition needs at least two nodes")
    cut: set[tuple[str, str]] = set()

    def between(a: Sequence[str], b: Sequence[str]) -> None:
        for x in a:
            for y in b:
                if x != y:
                    cut.add((x, y))
                    cut.add((y, x))

    if kind == "halves":
        between(names[:k // 2], names[k // 2:])
    elif kind == "one":
        between(names[:1], names[1:])
    elif kind == "bridge":  # two halves that both still see the middle node
        mid = k // 2
        between(names[:mid], names[mid + 1:])
    elif kind == "majorities-ring":  # each node sees a majority (its ring neighbours), no two the same one
        r = -(-(k // 2) // 2)  # 2r+1 >= k//2+1
        for i, x in enumerate(names):
            for j, y in enumerate(names):
                if i != j and min((i - j) % k, (j - i) % k) > r:
                    cut.add((x, y))
    else:
        raise HarnessError(f"unknown partition {kind!r}; choose one of {', '.join(PARTITIONS)}")
    return cut


def groups_of(kind: str, nodes: Sequence[Any]) -> list[list[str]]:
    """A human-readable description of the partition: who still sees whom."""
    cut = cut_links(kind, nodes)
    return [[n.name] + [m.name for m in nodes if m is not n and (n.name, m.name) not in cut] for n in nodes]


class ContainerFaults:
    """kill / pause / resume of a node that is one container (the Docker and Swarm backends): the
    backend finds the node's container (`_ct`) and says what a kill leaves behind (`_killed`)."""

    def _ct(self, node: Any) -> Any:
        raise NotImplementedError

    def _killed(self, node: Any) -> None:
        """After SIGKILL: the node's record (the Swarm backend forgets the task's container)."""

    def kill(self, node: Any) -> None:
        if node.state != "running":
            raise HarnessError(f"{node.name} is not running")
        self._ct(node).kill("SIGKILL")
        node.state = "killed"
        self._killed(node)
        self._fault("kill", node)  # type: ignore[attr-defined]

    def pause(self, node: Any) -> None:
        self._ct(node).pause()
        node.state = "paused"
        self._fault("pause", node)  # type: ignore[attr-defined]

    def resume(self, node: Any) -> None:
        self._ct(node).unpause()
        node.state = "running"
        self._fault("resume", node)  # type: ignore[attr-defined]
