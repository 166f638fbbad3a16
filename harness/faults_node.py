"""Faults on nodes themselves: SIGKILL, SIGSTOP (docker pause), restarts, a whole-grid restart."""

from __future__ import annotations

from .fault import Fault


class Kill(Fault):
    """SIGKILL `count` nodes (default 1); heal starts them again on their data."""

    name = "kill"
    summary = "SIGKILL nodes; heal starts them again on their data"
    changes_nodes = True
    default_count = 1

    def _apply(self) -> None:
        count = self.params.get("count") or self.default_count
        for name in self.pick(count, keep_majority=self.params.get("keep_majority", True)):
            self.cluster.kill(self.node(name))

    def _heal(self) -> None:
        if self.params.get("stay_down"):
            return
        self.cluster.restart_many([n for n in map(self.node, self.nodes) if n.state == "killed"])

    def describe(self) -> str:
        return f"SIGKILL {', '.join(self.nodes) or '?'}"

    def down(self) -> set[str]:
        return set(self.nodes)


class KillTwo(Kill):
    name = "kill2"
    summary = "SIGKILL two nodes at once (R=3 keeps a copy of every job); heal starts them again"
    default_count = 2


class Pause(Fault):
    """SIGSTOP (local) or the cgroup freezer (docker): the node is up but answers nothing."""

    name = "pause"
    summary = "SIGSTOP / docker pause nodes; heal resumes them"
    changes_nodes = True

    def _apply(self) -> None:
        for name in self.pick(self.params.get("count") or 1):
            self.cluster.pause(self.node(name))

    def _heal(self) -> None:
        for name in self.nodes:
            n = self.node(name)
            if n.state == "paused":
                self.cluster.resume(n)

    def describe(self) -> str:
        return f"pause {', '.join(self.nodes) or '?'}"

    def down(self) -> set[str]:
        return set(self.nodes)


class Restart(Fault):
    """SIGKILL a node and start it again on its data at once (a crash and a supervisor's restart)."""

    name = "restart"
    summary = "SIGKILL a node and start it again on its data at once"
    changes_nodes = True

    def _apply(self) -> None:
        for name in self.pick(self.params.get("count") or 1):
            n = self.node(name)
            self.cluster.kill(n)
            self.cluster.restart(n)

    def _heal(self) -> None:
        pass

    def describe(self) -> str:
        return f"restart {', '.join(self.nodes) or '?'}"


class RestartAll(Fault):
    """SIGKILL every node, then start them all again on their data with no live node to join through:
    a power cut. The nodes must find each other from the ring they stored."""

    name = "restart-all"
    summary = "SIGKILL every node, then start all again on their data (a power cut)"
    changes_nodes = True

    def _apply(self) -> None:
        self.nodes = [n.name for n in self.cluster.nodes]
        self.cluster.restart_all(timeout=float(self.params.get("timeout") or 120.0),
                                 stagger=float(self.params.get("stagger") or 0.0))

    def _heal(self) -> None:
        pass

    def describe(self) -> str:
        stagger = float(self.params.get("stagger") or 0.0)
        return ("restart all nodes (SIGKILL every node, start all again"
                + (f", one every {stagger:g} s)" if stagger else ")"))
