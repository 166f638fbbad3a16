"""The `local` backend: node processes on loopback addresses 127.0.0.x, faults with real signals,
iptables and Toxiproxy.

Each node binds its own address (127.0.0.<10+i>) and its outgoing peer connections come from that
address too, so iptables rules on the loopback interface can cut the links between two nodes.
Rules live in a chain of our own (one per cluster), inserted once into INPUT and removed on heal/stop.
With ``links="toxiproxy"`` a toxiproxy-server process of the cluster's own (on the block's tenth
address, or the server named by TOXIPROXY_URL) carries every link (harness/proxies.py).
The cluster's state (for `harness up` and the verbs after it) is saved and loaded here too.
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
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backend import ClusterBase
from .errors import HarnessError
from .proxies import ProxyNet


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


class PidProc:
    """Stands in for subprocess.Popen for a process started by an earlier `harness up` (not our child)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    self.returncode = -9
                    return self.returncode
            return None
        except (FileNotFoundError, ProcessLookupError):
            self.returncode = -9
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > end:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass


class LocalCluster(ClusterBase):
    """N node processes on this machine. Every process and rule it makes is removed by `stop()`."""

    backend = "local"

    def __init__(self, workdir: Path, *, replicas: int = 3, runners: int = 2, token: str | None = None,
                 heartbeat_interval: float = 0.5, failure_timeout: float = 2.0, lease_ttl: float = 3.0,
                 first_octet: int | None = None, port: int | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None,
                 exit_with_parent: bool = False, links: str = "direct") -> None:
        """`exit_with_parent`: nodes stop by themselves when this process dies (tests, benchmarks), so a
        killed test run leaves no grid behind; `harness up` leaves it off, its grid outlives the command.
        `links`: "direct", or "toxiproxy" to pass every link (and the clients' links) through a proxy."""
        if links not in ("direct", "toxiproxy"):
            raise HarnessError(f"links must be direct or toxiproxy, not {links!r}")
        self.links = links
        self.toxiproxy: Any = None  # the LocalToxiproxy process this cluster started, if any
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
                "--replicas", str(self.replicas), "--log-level", "info", *self.timing, *self.extra_args]
        if self.proxies is not None:
            if node.name not in self.proxies.upstreams:
                raise HarnessError(f"{node.name} was added after the proxies were made (harness up)")
            # every peer connection arrives from the proxy's address: the per-IP limit must not bite
            cmd += ["--dial", self.proxies.dial_map(node), "--max-conns-per-client", "100000"]
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

    def setup_links(self) -> None:
        """With links="toxiproxy": a toxiproxy-server (ours, or TOXIPROXY_URL's) and a proxy per link."""
        if self.links != "toxiproxy" or self.proxies is not None:
            return
        from .toxiserver import LocalToxiproxy, server_url  # noqa: PLC0415
        url = server_url()
        if url:
            host = urllib.parse.urlsplit(url).hostname or "127.0.0.1"
        else:
            host = self._host(9)  # the block's tenth address: the proxies' own
            self.toxiproxy = LocalToxiproxy(host, listen_port([host]), self.workdir / "toxiproxy.log",
                                            exit_with_parent=self.exit_with_parent).start()
            url = self.toxiproxy.url
        self.proxies = ProxyNet(url, prefix=self.chain.lower(), bind=host, reach=host)
        taken: set[int] = set()

        def ports():
            while True:
                p = listen_port([host])
                if p not in taken:
                    taken.add(p)
                    yield p
        self.proxies.setup(self.nodes, ports())

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

    def _ensure_chain(self) -> None:
        if os.geteuid() != 0:
            raise HarnessError("partitions on the local backend need root (iptables); "
                               "without root use --via toxiproxy")
        if not self._chain_made:
            self._ipt("-N", self.chain, check=False)
            if self._ipt("-C", "INPUT", "-j", self.chain, check=False).returncode != 0:
                self._ipt("-I", "INPUT", "1", "-j", self.chain)
            self._chain_made = True

    def cut(self, links: set[tuple[str, str]]) -> None:
        """DROP packets from a to b for each (a, b), and from a to the proxy of the link a->b when links pass
        Toxiproxy. Replaces the cut before (the chain is flushed first)."""
        self._ensure_chain()
        self._ipt("-F", self.chain)
        by_name = {n.name: n for n in self.nodes}
        for a, b in sorted(links):
            self._ipt("-A", self.chain, "-s", by_name[a].host, "-d", by_name[b].host, "-j", "DROP")
            if self.proxies is not None and (a, b) in self.proxies.ports:
                self._ipt("-A", self.chain, "-s", by_name[a].host, "-d", self.proxies.reach, "-p", "tcp",
                          "--dport", str(self.proxies.ports[(a, b)]), "-j", "DROP")

    def partition(self, groups: Sequence[Sequence[NodeHandle]]) -> None:
        """Cut every link between nodes of different groups (both directions). Idempotent."""
        self.cut({(x.name, y.name) for gi, a in enumerate(groups) for gj, b in enumerate(groups) if gi != gj
                  for x in a for y in b})
        self._fault("partition", groups=[[n.name for n in g] for g in groups])

    def uncut(self) -> None:
        if self._chain_made:
            self._ipt("-F", self.chain, check=False)

    def _remove_chain(self) -> None:
        if not self._chain_made:
            return
        self._ipt("-F", self.chain, check=False)
        while self._ipt("-D", "INPUT", "-j", self.chain, check=False).returncode == 0:
            pass
        self._ipt("-X", self.chain, check=False)
        self._chain_made = False

    def stop(self) -> None:
        """Stop every node this cluster started and remove every rule and proxy. Safe to call twice."""
        self._remove_chain()
        if self.toxiproxy is not None:
            self.toxiproxy.stop()
            self.toxiproxy = None
        elif self.proxies is not None:  # proxies on a server we did not start: remove ours only
            try:
                self.proxies.destroy()
            except HarnessError:
                pass
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

    # ---- state (harness up saves it; the verbs after it load it) ----------------------------------------------
    def to_state(self) -> dict:
        px = self.proxies
        return {"backend": "local", "workdir": str(self.workdir), "token": self.token, "replicas": self.replicas,
                "runners": self.runners, "port": self.port, "chain": self.chain, "chain_made": self._chain_made,
                "timing": self.timing, "links": self.links, "first_octet": self.first_octet,
                "proxies": None if px is None else {
                    "api": px.api, "prefix": px.prefix, "bind": px.bind, "reach": px.reach,
                    "upstreams": px.upstreams, "ports": [[a, b, p] for (a, b), p in px.ports.items()]},
                "toxiproxy": None if self.toxiproxy is None else {
                    "host": self.toxiproxy.host, "port": self.toxiproxy.port, "pid": self.toxiproxy.proc.pid},
                "nodes": [{"name": n.name, "host": n.host, "port": n.port, "data_dir": str(n.data_dir),
                           "log_path": str(n.log_path), "pid": n.pid, "state": n.state, "node_id": n.node_id}
                          for n in self.nodes]}

    @classmethod
    def from_state(cls, st: dict) -> LocalCluster:
        c = cls(Path(st["workdir"]), replicas=st["replicas"], runners=st["runners"], token=st["token"],
                port=st["port"], links=st.get("links", "direct"), first_octet=st.get("first_octet"))
        c.timing, c.chain, c._chain_made = st["timing"], st["chain"], st["chain_made"]
        if st.get("proxies"):
            p = st["proxies"]
            c.proxies = ProxyNet(p["api"], prefix=p["prefix"], bind=p["bind"], reach=p["reach"])
            c.proxies.upstreams = p["upstreams"]
            c.proxies.ports = {(a, b): port for a, b, port in p["ports"]}
        if st.get("toxiproxy"):
            from .toxiserver import LocalToxiproxy  # noqa: PLC0415
            t = st["toxiproxy"]
            c.toxiproxy = LocalToxiproxy(t["host"], t["port"], c.workdir / "toxiproxy.log")
            c.toxiproxy.proc = PidProc(t["pid"])  # type: ignore[assignment]
        for nd in st["nodes"]:
            n = NodeHandle(name=nd["name"], host=nd["host"], port=nd["port"], data_dir=Path(nd["data_dir"]),
                           log_path=Path(nd["log_path"]), state=nd["state"], node_id=nd["node_id"])
            if nd["pid"]:
                n.proc = PidProc(nd["pid"])  # type: ignore[assignment]
                if n.proc.poll() is not None and n.state in ("running", "paused"):
                    n.state = "killed"
            c.nodes.append(n)
        return c
