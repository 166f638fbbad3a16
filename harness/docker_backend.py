"""The `docker` backend: one container per node on an `internal` bridge network of the cluster's own.

* network: ``jobgrid-<cluster>``, internal (no route out), a /24 of its own so every node gets a fixed
  address (the host is attached to the bridge, so it reaches the nodes at those addresses);
* nodes: containers from ``jobgrid-node:latest``, env JOBGRID_PORT/ADVERTISE/JOIN/REPLICAS/TOKEN/...,
  ``cap_add=NET_ADMIN``, a named volume per node on /data (a restart keeps its queues);
* labels ``jobgrid.harness=<cluster>`` on everything, so `down` (and `remove_cluster`) find it all;
* faults: kill = SIGKILL, pause = cgroup freezer, restart = a fresh container on the same volume
  joining a live node, partition = iptables DROP rules in a JOBGRID chain inside each node's namespace;
* links="toxiproxy": a Toxiproxy container (``<cluster>-toxiproxy``, the network's .5 address, an image
  of the static binary built offline, harness/toxiserver.py) carries every link, clients' too.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .backend import ClusterBase, ContainerFaults, wait_for
from .errors import HarnessError
from .images import NODE_TAG, docker_client
from .proxies import ProxyNet

LABEL = "jobgrid.harness"
CHAIN = "JOBGRID"
CHAIN_OUT = "JOBGRIDO"  # OUTPUT: a node's packets to the proxies of its cut links
PORT = 8000
PROXY_PORTS = range(20000, 30000)


@dataclass
class DockerNode:
    name: str
    host: str
    port: int
    container: str        # container name
    volume: str
    state: str = "stopped"
    node_id: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _subnet_for(client: Any, cluster: str) -> str:
    """A free 172.30-31.x.0/24 (deterministic first guess from the name)."""
    used = set()
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            used.add(cfg.get("Subnet"))
    start = int.from_bytes(cluster.encode(), "little") % 500
    for k in range(500):
        i = (start + k) % 500
        subnet = f"172.{30 + i // 250}.{i % 250}.0/24"
        if subnet not in used:
            return subnet
    raise HarnessError("no free 172.30-31.x.0/24 subnet for the cluster network")


class DockerCluster(ContainerFaults, ClusterBase):
    """N containers; `stop()` removes every container, the network and the volumes."""

    backend = "docker"
    poll_interval = 0.1

    def __init__(self, name: str | None = None, *, replicas: int = 3, runners: int = 2, token: str | None = None,
                 heartbeat_interval: float = 0.5, failure_timeout: float = 2.0, image: str = NODE_TAG,
                 keep_volumes: bool = False, peer_secret: str | None = None, links: str = "direct") -> None:
        if links not in ("direct", "toxiproxy"):
            raise HarnessError(f"links must be direct or toxiproxy, not {links!r}")
        self.links = links
        self.client = docker_client()
        self.name = name or f"jg{secrets.token_hex(3)}"
        self.replicas = replicas
        self.runners = runners
        self.token = token or secrets.token_urlsafe(24)
        self.peer_secret = peer_secret or secrets.token_urlsafe(24)  # the nodes' own credential (not the clients')
        self.heartbeat_interval = heartbeat_interval
        self.failure_timeout = failure_timeout
        self.image = image
        self.keep_volumes = keep_volumes
        self.network = f"jobgrid-{self.name}"
        self.subnet = ""
        self.nodes: list[DockerNode] = []
        self.faults: list[dict] = []
        self.labels = {LABEL: self.name}
        self.shared = f"{self.name}-shared"  # a volume every node mounts on /shared (the soak's run counter)

    # ---- state save/restore (for the CLI) ----------------------------------------------------------------
    def to_state(self) -> dict:
        return {"backend": "docker", "name": self.name, "replicas": self.replicas, "runners": self.runners,
                "token": self.token, "peer_secret": self.peer_secret, "network": self.network, "subnet": self.subnet,
                "heartbeat_interval": self.heartbeat_interval, "failure_timeout": self.failure_timeout,
                "links": self.links, "nodes": [vars(n) for n in self.nodes],
                "proxies": None if self.proxies is None else {
                    "api": self.proxies.api, "reach": self.proxies.reach, "upstreams": self.proxies.upstreams,
                    "ports": [[a, b, p] for (a, b), p in self.proxies.ports.items()]}}

    @classmethod
    def from_state(cls, st: dict) -> DockerCluster:
        c = cls(st["name"], replicas=st["replicas"], runners=st["runners"], token=st["token"],
                peer_secret=st.get("peer_secret"),
                heartbeat_interval=st["heartbeat_interval"], failure_timeout=st["failure_timeout"],
                links=st.get("links", "direct"))
        c.subnet = st["subnet"]
        if st.get("proxies"):
            p = st["proxies"]
            c.proxies = ProxyNet(p["api"], prefix=c.name, bind="0.0.0.0", reach=p["reach"])
            c.proxies.upstreams = p["upstreams"]
            c.proxies.ports = {(a, b): port for a, b, port in p["ports"]}
        c.nodes = [DockerNode(**n) for n in st["nodes"]]
        for n in c.nodes:  # the truth is what docker says
            try:
                ct = c.client.containers.get(n.container)
                n.state = {"running": "running", "paused": "paused"}.get(ct.status, "killed")
            except Exception:  # noqa: BLE001
                n.state = "stopped"
        return c

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def _ensure_network(self) -> None:
        from docker.types import IPAMConfig, IPAMPool  # noqa: PLC0415
        if self.subnet:
            return
        self.subnet = _subnet_for(self.client, self.name)
        self.client.networks.create(self.network, driver="bridge", internal=True, labels=self.labels,
                                    ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=self.subnet)]))

    def add_node(self) -> DockerNode:
        self._ensure_network()
        i = len(self.nodes)
        base = self.subnet.rsplit(".", 1)[0]
        node = DockerNode(name=f"n{i + 1}", host=f"{base}.{10 + i}", port=PORT,
                          container=f"{self.name}-n{i + 1}", volume=f"{self.name}-n{i + 1}-data")
        self.nodes.append(node)
        return node

    def setup_links(self) -> None:
        """With links="toxiproxy": the Toxiproxy container on the cluster's network and a proxy per link."""
        if self.links != "toxiproxy" or self.proxies is not None:
            return
        from .toxiserver import API_PORT, answers, ensure_image  # noqa: PLC0415
        image = ensure_image(self.client)
        ip = f"{self.subnet.rsplit('.', 1)[0]}.5"
        api = self.client.api
        try:
            ct = api.create_container(
                image, name=f"{self.name}-toxiproxy", labels={**self.labels, "jobgrid.role": "toxiproxy"},
                host_config=api.create_host_config(network_mode=self.network),
                networking_config=api.create_networking_config(
                    {self.network: api.create_endpoint_config(ipv4_address=ip)}))
            api.start(ct["Id"])
        except Exception as e:  # noqa: BLE001 - docker API errors
            raise HarnessError(f"cannot start the Toxiproxy container: {e}") from e
        url = f"http://{ip}:{API_PORT}"
        wait_for(lambda: answers(url, 0.5), 30, f"Toxiproxy at {url}")
        self.proxies = ProxyNet(url, prefix=self.name, bind="0.0.0.0", reach=ip)
        self.proxies.setup(self.nodes, iter(PROXY_PORTS))

    def start(self, node: DockerNode, join: DockerNode | None = None) -> DockerNode:
        api = self.client.api
        try:  # a fresh container each time (the join address must name a live node); the volume stays
            self.client.containers.get(node.container).remove(force=True)
        except Exception:  # noqa: BLE001 - not there
            pass
        env = {"JOBGRID_PORT": str(PORT), "JOBGRID_HOST": "0.0.0.0", "JOBGRID_ADVERTISE": node.host,
               "JOBGRID_REPLICAS": str(self.replicas), "JOBGRID_TOKEN": self.token,
               "JOBGRID_PEER_SECRET": self.peer_secret,
               "JOBGRID_RUNNERS": str(self.runners), "JOBGRID_HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
               "JOBGRID_FAILURE_TIMEOUT": str(self.failure_timeout)}
        if join is not None:
            env["JOBGRID_JOIN"] = f"{join.host}:{join.port}"
        command = [str(PORT)]
        if self.proxies is not None:
            env["JOBGRID_DIAL"] = self.proxies.dial_map(node)
            command += ["--max-conns-per-client", "100000"]  # every peer connection comes from the proxy
        try:
            self.client.volumes.get(node.volume)
        except Exception:  # noqa: BLE001
            self.client.volumes.create(node.volume, labels=self.labels)
        host_config = api.create_host_config(cap_add=["NET_ADMIN"], network_mode=self.network,
                                             binds={node.volume: {"bind": "/data", "mode": "rw"},
                                                    self._shared_volume(): {"bind": "/shared", "mode": "rw"}})
        net_config = api.create_networking_config({self.network: api.create_endpoint_config(ipv4_address=node.host)})
        try:
            ct = api.create_container(self.image, command=command, name=node.container, environment=env,
                                      labels={**self.labels, "jobgrid.node": node.name}, host_config=host_config,
                                      networking_config=net_config)
            api.start(ct["Id"])
        except Exception as e:  # noqa: BLE001
            raise HarnessError(f"cannot start container for {node.name}: {e}") from e
        node.state = "running"
        return node

    def _shared_volume(self) -> str:
        try:
            self.client.volumes.get(self.shared)
        except Exception:  # noqa: BLE001 - not made yet
            self.client.volumes.create(self.shared, labels=self.labels)
            os.chmod(self.shared_dir(), 0o777)  # the nodes' job processes run as the image's jobgrid user
        return self.shared

    def shared_dir(self) -> str:
        """The shared volume's folder on this host (the Engine runs here: it is the harness's own)."""
        return self.client.volumes.get(self.shared).attrs["Mountpoint"]

    # ---- observing ---------------------------------------------------------------------------------------
    def get(self, node: DockerNode, path: str, timeout: float = 2.0) -> dict | list:
        req = urllib.request.Request(node.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def _status(self, node: DockerNode) -> str:
        try:
            return self.client.containers.get(node.container).status
        except Exception:  # noqa: BLE001
            return "missing"

    def wait_healthy(self, node: DockerNode, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.healthy(node):
                node.node_id = self.get(node, "/state")["id"]  # type: ignore[index]
                return
            if self._status(node) in ("exited", "dead", "missing"):
                raise HarnessError(f"{node.name} exited; log tail:\n" + self.log_tail(node))
            time.sleep(0.1)
        raise HarnessError(f"{node.name} not healthy after {timeout} s; log tail:\n" + self.log_tail(node))

    def log_tail(self, node: DockerNode, lines: int = 30) -> str:
        try:
            return self.client.containers.get(node.container).logs(tail=lines).decode(errors="replace")
        except Exception:  # noqa: BLE001
            return ""

    def logs(self, node: DockerNode) -> str:
        return self.log_tail(node, lines=100000)

    # ---- faults ------------------------------------------------------------------------------------------
    def _ct(self, node: DockerNode) -> Any:
        try:
            return self.client.containers.get(node.container)
        except Exception as e:  # noqa: BLE001
            raise HarnessError(f"{node.name}: no container {node.container}") from e


    def _exec(self, node: DockerNode, *cmd: str, check: bool = True) -> tuple[int, str]:
        code, out = self._ct(node).exec_run(list(cmd), user="root")
        text = out.decode(errors="replace") if out else ""
        if check and code != 0:
            raise HarnessError(f"{node.name}: {' '.join(cmd)} failed: {text.strip()}")
        return code, text

    def _chain(self, node: DockerNode, chain: str, hook: str) -> None:
        self._exec(node, "iptables", "-w", "-N", chain, check=False)
        if self._exec(node, "iptables", "-w", "-C", hook, "-j", chain, check=False)[0] != 0:
            self._exec(node, "iptables", "-w", "-I", hook, "1", "-j", chain)
        self._exec(node, "iptables", "-w", "-F", chain)

    def cut(self, links: set[tuple[str, str]]) -> None:
        """Drop traffic for each (a, b): rules in b's namespace drop packets from a, and when links pass
        Toxiproxy, rules in a's namespace drop its packets to the proxy of a->b. Replaces the cut before."""
        by_name = {n.name: n for n in self.nodes}
        for n in self.nodes:
            if n.state not in ("running", "paused"):
                continue
            if n.state == "paused":
                raise HarnessError(f"{n.name} is paused; resume it before partitioning")
            self._chain(n, CHAIN, "INPUT")
            for a, b in sorted(links):
                if b == n.name:
                    self._exec(n, "iptables", "-w", "-A", CHAIN, "-s", by_name[a].host, "-j", "DROP")
            if self.proxies is None:
                continue
            self._chain(n, CHAIN_OUT, "OUTPUT")
            for a, b in sorted(links):
                if a == n.name and (a, b) in self.proxies.ports:
                    self._exec(n, "iptables", "-w", "-A", CHAIN_OUT, "-d", self.proxies.reach, "-p", "tcp",
                               "--dport", str(self.proxies.ports[(a, b)]), "-j", "DROP")

    def partition(self, groups: Sequence[Sequence[DockerNode]]) -> None:
        links = set()
        for gi, a in enumerate(groups):
            for gj, b in enumerate(groups):
                if gi != gj:
                    links |= {(x.name, y.name) for x in a for y in b}
        self.cut(links)
        self._fault("partition", groups=[[n.name for n in g] for g in groups])

    def uncut(self) -> None:
        for n in self.live():
            self._exec(n, "iptables", "-w", "-F", CHAIN, check=False)
            if self.proxies is not None:
                self._exec(n, "iptables", "-w", "-F", CHAIN_OUT, check=False)

    def stop(self) -> None:
        """Remove every container, the network and (unless keep_volumes) the volumes. Safe twice."""
        remove_cluster(self.client, self.name, volumes=not self.keep_volumes)
        for n in self.nodes:
            n.state = "stopped"

def remove_cluster(client: Any, name: str | None = None, *, volumes: bool = True) -> int:
    """Remove everything labelled for cluster `name` (every harness cluster when None). Returns a count."""
    flt = {"label": f"{LABEL}={name}" if name else LABEL}
    count = 0
    for ct in client.containers.list(all=True, filters=flt):
        try:
            ct.remove(force=True, v=True)
            count += 1
        except Exception:  # noqa: BLE001 - already gone
            pass
    for net in client.networks.list(filters=flt):
        try:
            net.remove()
            count += 1
        except Exception:  # noqa: BLE001
            pass
    if volumes:
        for vol in client.volumes.list(filters=flt):
            try:
                vol.remove(force=True)
                count += 1
            except Exception:  # noqa: BLE001
                pass
    return count
