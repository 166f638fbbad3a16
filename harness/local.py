"""The `local` backend: node processes on loopback addresses 127.0.0.x, faults with real signals and iptables.

Each node binds its own address (127.0.0.<10+i>) and its outgoing peer connections come from that
address too, so iptables rules on the loopback interface can cut the links between two nodes.
Rules live in a chain of our own (one per cluster), inserted once into INPUT and removed on heal/stop.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backend import ClusterBase
from .errors import HarnessError


@dataclass
class NodeHandle:
    name: str
    host: str
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    state: str = "stopped"   # running | killed | paused | stopped
    node_id: str = ""
    history: list[dict] = field(default_factory=list)
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listen_port(hosts: Sequence[str]) -> int:
    """A port free on every one of `hosts`, below the kernel's ephemeral range: the nodes' own outgoing
    connections (bound to their addresses) take ephemeral ports, so a cluster started later could
    otherwise find its port taken by one of them on some address."""
    low, high = 20000, 32767
    try:
        low_eph = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
        high = min(high, low_eph - 1)
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randint(low, high)
        try:
            for h in hosts:
                with socket.socket() as s:
                    s.bind((h, port))
            return port
        except OSError:
            continue
    return free_port(hosts[0])


class LocalCluster(ClusterBase):
    """N node processes on this machine. Every process and rule it makes is removed by `stop()`."""

    backend = "local"

    def __init__(self, workdir: Path, *, replicas: int | None = 3, runners: int = 2, token: str | None = None,
                 heartbeat_interval: float = 0.5, failure_timeout: float = 2.0, lease_ttl: float = 3.0,
                 first_octet: int | None = None, port: int | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None,
                 exit_with_parent: bool = False) -> None:
        """`exit_with_parent`: nodes stop by themselves when this process dies (tests, benchmarks), so a
        killed test run leaves no grid behind; `harness up` leaves it off, its grid outlives the command."""
        self.ssl_context = ssl_context  # set for TLS nodes (--tls-* in extra_args): talk https
        self.exit_with_parent = exit_with_parent
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.replicas = replicas
        self.runners = runners
        self.token = token
        # with a client token the nodes need their own credential: kept in the work dir, so restarts (and
        # a harness command that reloads the cluster) find the same one
        secret_file = self.workdir / "peer-secret"
        self.peer_secret = (secret_file.read_text().strip() if secret_file.exists() else secrets.token_urlsafe(24)) \
            if token else None
        self.timing = ["--heartbeat-interval", str(heartbeat_interval), "--failure-timeout", str(failure_timeout),
                       "--lease-ttl", str(lease_ttl)]
        self.extra_args = list(extra_args)
        self.env = env or {}
        # distinct address block per cluster, so clusters in one test run never collide
        self.first_octet = first_octet if first_octet is not None else 10 + (os.getpid() % 20) * 10
        self.port = port or listen_port([self._host(i) for i in range(8)])
        self.nodes: list[NodeHandle] = []
        self.chain = f"JG{os.getpid() % 100000}{self.port}"[:28]
        self._chain_made = False
        self.faults: list[dict] = []

    # ---- lifecycle -------------------------------------------------------------------------------
    def _cmd(self, node: NodeHandle, join: NodeHandle | None) -> list[str]:
        cmd = [sys.executable, "-m", "jobgrid.cli", "server", str(node.port)]
        if join is not None:
            cmd += [join.host, str(join.port)]
        cmd += ["--host", node.host, "--data-dir", str(node.data_dir), "--runners", str(self.runners),
                *(["--replicas", str(self.replicas)] if self.replicas is not None else []),
                "--log-level", "info", *self.timing, *self.extra_args]
        if self.token:
            tf = self.workdir / "token"
            tf.write_text(self.token)
            tf.chmod(0o600)
            cmd += ["--token-file", str(tf)]
        if self.peer_secret:
            pf = self.workdir / "peer-secret"
            pf.write_text(self.peer_secret)
            pf.chmod(0o600)
            cmd += ["--peer-secret-file", str(pf)]
        return cmd

    def _host(self, i: int) -> str:
        o = self.first_octet
        return f"127.0.{o // 256}.{o % 256 + i}" if o >= 256 else f"127.0.0.{o + i}"

    def add_node(self) -> NodeHandle:
        i = len(self.nodes)
        host = self._host(i)
        node = NodeHandle(name=f"n{i + 1}", host=host, port=self.port, data_dir=self.workdir / f"n{i + 1}",
                          log_path=self.workdir / f"n{i + 1}.log",
                          scheme="https" if self.ssl_context else "http")
        self.nodes.append(node)
        return node

    def start(self, node: NodeHandle, join: NodeHandle | None = None) -> NodeHandle:
        if node.proc is not None and node.proc.poll() is None:
            raise HarnessError(f"{node.name} is already running")
        env = {k: v for k, v in os.environ.items() if k not in ("JOBGRID_TOKEN", "JOBGRID_PEER_SECRET")}
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.exit_with_parent:
            env["JOBGRID_EXIT_WITH_PARENT"] = str(os.getpid())
        log = open(node.log_path, "ab")
        node.proc = subprocess.Popen(self._cmd(node, join), stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        node.state = "running"
        return node

    # ---- observing ---------------------------------------------------------------------------------
    def get(self, node: NodeHandle, path: str, timeout: float = 2.0) -> dict | list:
        req = urllib.request.Request(node.url + path)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as r:
            return json.loads(r.read())

    def wait_healthy(self, node: NodeHandle, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if node.proc is not None and node.proc.poll() is not None:
                raise HarnessError(f"{node.name} exited with code {node.proc.returncode}; log tail:\n"
                                   + self.log_tail(node))
            if self.healthy(node):
                st = self.get(node, "/state")
                node.node_id = st["id"]  # type: ignore[index]
                return
            time.sleep(0.05)
        raise HarnessError(f"{node.name} not healthy after {timeout} s; log tail:\n" + self.log_tail(node))

    def log_tail(self, node: NodeHandle, lines: int = 30) -> str:
        try:
            return "\n".join(node.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ---- faults ------------------------------------------------------------------------------------------
    def kill(self, node: NodeHandle) -> None:
        if node.proc is None or node.proc.poll() is not None:
            raise HarnessError(f"{node.name} is not running")
        os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)
        node.state = "killed"
        self._fault("kill", node)

    def pause(self, node: NodeHandle) -> None:
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGSTOP)
        node.state = "paused"
        self._fault("pause", node)

    def resume(self, node: NodeHandle) -> None:
        assert node.proc is not None
        os.kill(node.proc.pid, signal.SIGCONT)
        node.state = "running"
        self._fault("resume", node)


    def _ipt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        if shutil.which("iptables") is None:
            raise HarnessError("iptables is not installed (apt-get install iptables)")
        r = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise HarnessError(f"iptables {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def partition(self, groups: Sequence[Sequence[NodeHandle]]) -> None:
        """Cut every link between nodes of different groups (both directions). Idempotent."""
        if os.geteuid() != 0:
            raise HarnessError("partitions need root (iptables)")
        if not self._chain_made:
            self._ipt("-N", self.chain, check=False)
            if self._ipt("-C", "INPUT", "-j", self.chain, check=False).returncode != 0:
                self._ipt("-I", "INPUT", "1", "-j", self.chain)
            self._chain_made = True
        self._ipt("-F", self.chain)
        for gi, a in enumerate(groups):
            for gj, b in enumerate(groups):
                if gi == gj:
                    continue
                for x in a:
                    for y in b:
                        self._ipt("-A", self.chain, "-s", x.host, "-d", y.host, "-j", "DROP")
        self._fault("partition", groups=[[n.name for n in g] for g in groups])

    def heal(self) -> None:
        if self._chain_made:
            self._ipt("-F", self.chain, check=False)
            self._fault("heal")

    def _remove_chain(self) -> None:
        if not self._chain_made:
            return
        self._ipt("-F", self.chain, check=False)
        while self._ipt("-D", "INPUT", "-j", self.chain, check=False).returncode == 0:
            pass
        self._ipt("-X", self.chain, check=False)
        self._chain_made = False

    def stop(self) -> None:
        """Stop every node this cluster started and remove every rule. Safe to call twice."""
        self._remove_chain()
        for n in self.nodes:
            if n.proc is None:
                continue
            if n.state == "paused":
                try:
                    os.kill(n.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            if n.proc.poll() is None:
                try:
                    os.killpg(n.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for n in self.nodes:
            if n.proc is None:
                continue
            try:
                n.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:  # the whole session: the node and its worker processes
                os.killpg(n.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                n.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            n.state = "stopped"
