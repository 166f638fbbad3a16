"""The `swarm` backend: the grid as a Docker Swarm stack, deployed from deploy/swarm/jobgrid-stack.yml.

* swarm: this Engine's, made a one-host swarm (`docker swarm init --advertise-addr 127.0.0.1`) when it is
  not one yet, and left again on `stop()` only then;
* stack ``<cluster>``: the repository's stack file as deployed, with the harness's changes (render): the
  image, R, runners, timings, the replica count, the token and the peer secret as secret *files* the stack
  creates (``<cluster>_jobgrid_token``, removed with it), an internal overlay network (no route out), and a
  volume shared by every task on /shared (the run counter of harness/sidefx.py);
* nodes: the service's running tasks, one per slot (``n<slot>``), at their address on the overlay network;
  they join through ``tasks.<service>`` like any deployment. A slot keeps its volume across task replacements;
* reaching them: the host is not on the overlay, so a gateway container (``<cluster>-gw``, harness/swarm_gateway.py)
  sits on it and on an internal bridge of its own, masquerading, and the host routes the overlay's subnet
  through it; clients dial the gateway's own port 8000 first, which forwards to a live task;
* faults: kill = SIGKILL of the task's container (Swarm starts a new task in the slot, on the same volume),
  pause = cgroup freezer (a pause longer than the health check's patience, ~30 s, makes Swarm replace the task),
  restart = a graceful stop of the container (Swarm replaces it), partition = iptables rules entered in each
  task's network namespace from the host (nsenter: the tasks have no capabilities); restart-all is refused
  (a whole grid back at new addresses cannot find itself yet); Toxiproxy faults are refused (direct links);
* orchestrator verbs: `scale(n)` (`docker service scale`), `rolling_update()` (`docker service update --force`).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backend import ClusterBase, ContainerFaults, wait_for
from .errors import HarnessError
from .images import NODE_TAG, PROJECT_ROOT, docker_client
from .swarm_gateway import start_gateway

STACK_FILE = PROJECT_ROOT / "deploy" / "swarm" / "jobgrid-stack.yml"
LABEL = "jobgrid.swarm"
CHAIN = "JOBGRID"
PORT = 8000


@dataclass
class SwarmNode:
    name: str
    slot: int
    host: str = ""
    port: int = PORT
    container: str = ""   # the running task's container id ("" between tasks)
    task: str = ""
    state: str = "starting"
    node_id: str = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _run(*cmd: str, timeout: float = 120.0, check: bool = True) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HarnessError(f"{' '.join(cmd)}: {e}") from e
    if check and r.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def ensure_swarm(client: Any) -> bool:
    """Make this Engine a swarm manager if it is not one; True when this call initialised the swarm (and the
    docker_gwbridge network `swarm init` makes, when there was none)."""
    sw = client.info().get("Swarm") or {}
    if sw.get("LocalNodeState") == "active":
        if not sw.get("ControlAvailable"):
            raise HarnessError("this Engine is a swarm worker, not a manager: the swarm backend needs a manager")
        return False
    try:
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    except Exception as e:  # noqa: BLE001 - docker API errors
        raise HarnessError(f"docker swarm init failed: {e}") from e
    return True


def render(stack: dict, *, image: str, nodes: int, replicas: int, runners: int, heartbeat: float, failure: float,
           leave_timeout: float, secret_dir: Path, shared: str) -> dict:
    """The stack file with the harness's changes (see the module's docstring); the rest is deployed as written."""
    svc = stack["services"]["node"]
    svc["image"] = image
    svc["environment"].update({
        "JOBGRID_REPLICAS": str(replicas), "JOBGRID_RUNNERS": str(runners),
        "JOBGRID_HEARTBEAT_INTERVAL": str(heartbeat), "JOBGRID_FAILURE_TIMEOUT": str(failure),
        "JOBGRID_LEAVE_TIMEOUT": str(int(leave_timeout)), "JOBGRID_JOIN_WAIT": "150"})
    svc["stop_grace_period"] = f"{int(leave_timeout) + 10}s"
    svc["healthcheck"].update({"interval": "1s", "retries": 30})   # a pause of up to ~30 s is not a death
    svc["volumes"].append({"type": "volume", "source": "shared", "target": "/shared"})
    d = svc["deploy"]
    d["replicas"] = nodes
    d["update_config"].update({"delay": "1s", "monitor": "2s"})
    d["restart_policy"]["delay"] = "1s"
    d["resources"] = {"limits": {"memory": "1G"}}
    stack["networks"]["grid"].update({"internal": True, "attachable": True})
    stack["volumes"]["shared"] = {"name": shared}
    stack["secrets"] = {name: {"file": str(secret_dir / name)} for name in stack["secrets"]}
    return stack


class SwarmCluster(ContainerFaults, ClusterBase):
    """The grid as a stack on a (one-host) swarm; `stop()` removes the stack, its secrets and volumes, the
    gateway, its network and route, and the swarm if `up` made it."""

    backend = "swarm"
    poll_interval = 0.2

    def __init__(self, name: str | None = None, *, replicas: int = 3, runners: int = 1, token: str | None = None,
                 peer_secret: str | None = None, heartbeat_interval: float = 0.5, failure_timeout: float = 2.0,
                 image: str = NODE_TAG, leave_timeout: float = 20.0, links: str = "direct",
                 workdir: str | None = None) -> None:
        if links != "direct":
            raise HarnessError("the swarm backend has direct links only (no Toxiproxy on the overlay network)")
        self.links = links
        self.client = docker_client()
        self.name = name or f"jgs{secrets.token_hex(3)}"
        self.replicas, self.runners, self.image = replicas, runners, image
        self.token = token or secrets.token_urlsafe(24)
        self.peer_secret = peer_secret or secrets.token_urlsafe(24)
        self.heartbeat_interval, self.failure_timeout = heartbeat_interval, failure_timeout
        self.leave_timeout = leave_timeout
        self.service = f"{self.name}_node"
        self.network = f"{self.name}_grid"
        self.gateway = f"{self.name}-gw"
        self.shared = f"{self.name}-shared"
        self.workdir = workdir or ""
        self.subnet = ""          # the overlay's, routed through the gateway
        self.entry = ""           # the gateway's address on its bridge: clients' entry, the route's next hop
        self.made_swarm = False
        self.made_gwbridge = False
        self.nodes: list[SwarmNode] = []
        self.faults: list[dict] = []

    # ---- state save/restore (for the CLI) ----------------------------------------------------------------
    def to_state(self) -> dict:
        return {"backend": "swarm", "name": self.name, "replicas": self.replicas, "runners": self.runners,
                "token": self.token, "peer_secret": self.peer_secret, "image": self.image,
                "heartbeat_interval": self.heartbeat_interval, "failure_timeout": self.failure_timeout,
                "leave_timeout": self.leave_timeout, "workdir": self.workdir, "subnet": self.subnet,
                "entry": self.entry, "made_swarm": self.made_swarm, "made_gwbridge": self.made_gwbridge,
                "links": self.links, "nodes": [vars(n) for n in self.nodes]}

    @classmethod
    def from_state(cls, st: dict) -> SwarmCluster:
        c = cls(st["name"], replicas=st["replicas"], runners=st["runners"], token=st["token"],
                peer_secret=st["peer_secret"], heartbeat_interval=st["heartbeat_interval"],
                failure_timeout=st["failure_timeout"], image=st["image"], leave_timeout=st["leave_timeout"],
                workdir=st["workdir"])
        c.entry = st.get("entry", "")
        c.subnet, c.made_swarm, c.made_gwbridge = st["subnet"], st["made_swarm"], st.get("made_gwbridge", False)
        c.nodes = [SwarmNode(**n) for n in st["nodes"]]
        c.refresh()
        return c

    # ---- deploying -------------------------------------------------------------------------------------
    def _write_stack(self, nodes: int) -> Path:
        import yaml  # noqa: PLC0415
        wd = Path(self.workdir or tempfile.mkdtemp(prefix=f"harness-swarm-{self.name}-"))
        self.workdir = str(wd)
        os.chmod(wd, 0o700)
        for fname, value in (("jobgrid_token", self.token), ("jobgrid_peer_secret", self.peer_secret)):
            fd = os.open(wd / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value + "\n")
        stack = render(yaml.safe_load(STACK_FILE.read_text()), image=self.image, nodes=nodes, replicas=self.replicas,
                       runners=self.runners, heartbeat=self.heartbeat_interval, failure=self.failure_timeout,
                       leave_timeout=self.leave_timeout, secret_dir=wd, shared=self.shared)
        out = wd / "stack.yml"
        out.write_text(yaml.safe_dump(stack, sort_keys=False))
        return out

    def up(self, n: int, *, timeout: float = 180.0, together: bool = True) -> list:
        """Deploy the stack with `n` replicas; wait until every task has joined and the ring has converged."""
        had_bridge = bool(self.client.networks.list(names=["docker_gwbridge"]))
        if ensure_swarm(self.client):
            self.made_swarm, self.made_gwbridge = True, not had_bridge
        stack = self._write_stack(n)
        self._shared_volume()
        _run("docker", "stack", "deploy", "--detach=true", "-c", str(stack), self.name)
        self._gateway()
        self.wait_tasks(n, timeout)
        return self.nodes

    def _shared_volume(self) -> None:
        try:
            vol = self.client.volumes.get(self.shared)
        except Exception:  # noqa: BLE001 - not made yet
            vol = self.client.volumes.create(self.shared, labels={LABEL: self.name})
        os.chmod(vol.attrs["Mountpoint"], 0o777)  # job processes run as the image's jobgrid user

    def shared_dir(self) -> str:
        return self.client.volumes.get(self.shared).attrs["Mountpoint"]

    def _gateway(self) -> None:
        net = wait_for(lambda: self._network(), 30, f"overlay network {self.network}")
        self.subnet = net.attrs["IPAM"]["Config"][0]["Subnet"]
        self.entry = start_gateway(self.client, name=self.gateway, network=net, image=self.image,
                                   labels={LABEL: self.name}, service=self.service, port=PORT)
        _run("ip", "route", "replace", self.subnet, "via", self.entry)

    def _network(self) -> Any:
        nets = [n for n in self.client.networks.list(names=[self.network]) if n.name == self.network]
        return self.client.networks.get(nets[0].id) if nets else None

    # ---- the service's tasks are the nodes -------------------------------------------------------------------
    def _tasks(self) -> list[dict]:
        try:
            return self.client.api.tasks(filters={"service": self.service})
        except Exception:  # noqa: BLE001 - the service is gone
            return []

    def refresh(self) -> list[SwarmNode]:
        """Nodes from the service's tasks: one per slot; a slot whose task is not running is `killed` (a task
        that died, waiting for its replacement) or dropped (scaled away)."""
        by_slot = self.__dict__.setdefault("_slots", {})  # one object per slot, even across a gap between tasks
        for n in self.nodes:
            by_slot.setdefault(n.slot, n)
        running: dict[int, dict] = {}
        wanted: set[int] = set()
        for t in self._tasks():
            slot = t.get("Slot")
            if slot is None:
                continue
            if t.get("DesiredState") == "running":
                wanted.add(slot)
            if t["Status"]["State"] == "running" and t.get("DesiredState") == "running":
                running[slot] = t
        for slot in sorted(wanted | set(running)):
            node = by_slot.setdefault(slot, SwarmNode(name=f"n{slot}", slot=slot))
            t = running.get(slot)
            if t is None:
                if node.state != "paused":
                    node.state, node.container = "killed", ""
                continue
            addr = next((a["Addresses"][0] for a in t.get("NetworksAttachments", [])
                         if a["Network"]["Spec"]["Name"] == self.network), "")
            if node.task != t["ID"]:
                node.task, node.host = t["ID"], addr.split("/")[0]
                node.container = t["Status"]["ContainerStatus"]["ContainerID"]
                node.state = "running"
        self.nodes = [by_slot[s] for s in sorted(wanted | set(running))]
        return self.nodes

    def live(self) -> list:
        self.refresh()
        return [n for n in self.nodes if n.state == "running"]

    def wait_tasks(self, n: int, timeout: float = 180.0) -> float:
        """Until `n` tasks run, each answers /healthz and the ring is made of exactly them; returns seconds."""
        t0 = time.monotonic()

        def ready() -> bool:
            nodes = self.live()
            return (len(nodes) == n and len(self.nodes) == n and all(self.healthy(x) for x in nodes)
                    and self.converged(nodes))
        wait_for(ready, timeout, f"{n} tasks of {self.service} in one ring", step=0.5)
        self.wait_converged(5)
        return time.monotonic() - t0

    def scale(self, n: int, timeout: float = 180.0) -> float:
        """`docker service scale <service>=n`, then wait for a ring of the n tasks; returns seconds."""
        t0 = time.monotonic()
        _run("docker", "service", "scale", "--detach", f"{self.service}={n}")
        self._fault("scale", replicas=n)
        self.wait_tasks(n, timeout)
        return time.monotonic() - t0

    def rolling_update(self, timeout: float = 300.0) -> float:
        """`docker service update --force`: every task replaced, one at a time, the old one stopped first."""
        t0 = time.monotonic()
        old = {n.task for n in self.live()}
        _run("docker", "service", "update", "--detach", "--force", self.service)
        self._fault("rolling-update")

        def done() -> bool:
            st = (self.client.api.inspect_service(self.service).get("UpdateStatus") or {}).get("State")
            if st in ("paused", "rollback_completed", "rollback_paused"):
                raise HarnessError(f"the rolling update of {self.service} stopped: {st}")
            return st == "completed"
        wait_for(done, timeout, f"the rolling update of {self.service}", step=0.5)
        n = len(old)
        self.wait_tasks(n, timeout)
        if {x.task for x in self.nodes} & old:
            raise HarnessError("the rolling update left some old tasks running")
        return time.monotonic() - t0

    def client_urls(self) -> list[str]:
        """The gateway's entry first (it outlives every task: a rolling update gives every node a new
        address; it forwards each connection to a live task, found as tasks.<service>), then the tasks."""
        return [f"http://{self.entry}:{PORT}"] + [n.url for n in self.live()]

    # ---- observing ---------------------------------------------------------------------------------------
    def get(self, node: SwarmNode, path: str, timeout: float = 2.0) -> dict | list:
        if not node.host:
            raise OSError(f"{node.name} has no running task")
        req = urllib.request.Request(node.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def wait_healthy(self, node: SwarmNode, timeout: float = 60.0) -> None:
        def ok() -> bool:
            self.refresh()
            return node.state == "running" and self.healthy(node)
        wait_for(ok, timeout, f"{node.name} ({self.service} slot {node.slot}) healthy", step=0.3)
        node.node_id = self.get(node, "/state")["id"]  # type: ignore[index]

    def log_tail(self, node: SwarmNode, lines: int = 30) -> str:
        """The last lines of the slot's running task (or, between tasks, of the ones before it)."""
        if node.container:
            try:
                return self.client.containers.get(node.container).logs(tail=lines).decode(errors="replace")
            except Exception:  # noqa: BLE001 - the task just went
                pass
        return "\n".join(self.logs(node).splitlines()[-lines:])

    def logs(self, node: SwarmNode) -> str:
        """Every task's output in this slot, oldest first: Swarm keeps the replaced tasks' containers (its task
        history). Read from the containers: `docker service logs` can hang on a task that died."""
        api = self.client.api
        cts = api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={self.service}"})
        mine = sorted((c for c in cts if (c.get("Labels") or {}).get("com.docker.swarm.task.name", "").startswith(
            f"{self.service}.{node.slot}.")), key=lambda c: c["Created"])
        out = []
        for c in mine:
            try:
                out.append(api.logs(c["Id"]).decode(errors="replace"))
            except Exception:  # noqa: BLE001 - removed in between
                pass
        return "".join(out)

    # ---- faults ------------------------------------------------------------------------------------------
    def _ct(self, node: SwarmNode) -> Any:
        if not node.container:
            raise HarnessError(f"{node.name} has no running task")
        return self.client.containers.get(node.container)

    def _killed(self, node: SwarmNode) -> None:
        node.container = ""  # Swarm replaces the task: its next container is found by slot

    def start(self, node: SwarmNode, join: Any = None) -> SwarmNode:
        """Swarm starts the tasks: wait for the slot's next one."""
        self.wait_healthy(node, 120)
        return node

    def add_node(self) -> SwarmNode:
        raise HarnessError("the swarm backend adds nodes with scale(n) (docker service scale)")

    def restart_many(self, nodes: Sequence[SwarmNode], timeout: float = 120.0) -> None:
        """Running nodes are stopped gracefully (SIGTERM); Swarm starts a new task in each slot, on its volume."""
        past = self.__dict__.setdefault("past_ids", {})
        old = {}
        for node in nodes:
            if node.node_id:
                past[node.node_id] = node.name
            old[node.slot] = node.task
            if node.state in ("running", "paused"):
                if node.state == "paused":
                    self.resume(node)
                self._ct(node).stop(timeout=int(self.leave_timeout) + 10)
        for node in nodes:
            wait_for(lambda: self.refresh() and node.task != old[node.slot] and node.state == "running", timeout,
                     f"a new task in slot {node.slot}", step=0.3)
            self.wait_healthy(node, timeout)
            self._fault("restart", node)

    def restart_all(self, timeout: float = 180.0, stagger: float = 0.0) -> None:
        raise HarnessError(
            "restart-all is not supported on the swarm backend: every new task comes back at a new address, "
            "the ring each one saved names only the old ones, and tasks.<service> lists no task until one is "
            "healthy, so the grid cannot find itself again (docs/deploy.md, 'What is not done yet')")

    def _nsenter(self, node: SwarmNode, *cmd: str, check: bool = True) -> str:
        pid = str(self._ct(node).attrs["State"]["Pid"])
        return _run("nsenter", "-t", pid, "-n", *cmd, check=check)

    def cut(self, links: set[tuple[str, str]]) -> None:
        """Drop traffic for each (a, b): rules in b's namespace drop packets from a. Replaces the cut before."""
        by_name = {n.name: n for n in self.nodes}
        for n in self.live():
            self._nsenter(n, "iptables", "-w", "-N", CHAIN, check=False)
            if subprocess.run(["nsenter", "-t", str(self._ct(n).attrs["State"]["Pid"]), "-n", "iptables", "-w",
                               "-C", "INPUT", "-j", CHAIN], capture_output=True).returncode != 0:
                self._nsenter(n, "iptables", "-w", "-I", "INPUT", "1", "-j", CHAIN)
            self._nsenter(n, "iptables", "-w", "-F", CHAIN)
            for a, b in sorted(links):
                if b == n.name and by_name[a].host:
                    self._nsenter(n, "iptables", "-w", "-A", CHAIN, "-s", by_name[a].host, "-j", "DROP")

    def partition(self, groups: Sequence[Sequence[SwarmNode]]) -> None:
        links = set()
        for gi, a in enumerate(groups):
            for gj, b in enumerate(groups):
                if gi != gj:
                    links |= {(x.name, y.name) for x in a for y in b}
        self.cut(links)
        self._fault("partition", groups=[[n.name for n in g] for g in groups])

    def uncut(self) -> None:
        for n in self.live():
            self._nsenter(n, "iptables", "-w", "-F", CHAIN, check=False)

    # ---- tearing down ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Remove the stack (service, network, secrets), its volumes, the gateway and its route; leave the
        swarm if `up` made it. Safe twice, and after a failed `up`."""
        _run("docker", "stack", "rm", self.name, check=False)
        if self.subnet:
            _run("ip", "route", "del", self.subnet, check=False)
        for ct in self.client.api.containers(all=True, filters={"label": f"{LABEL}={self.name}"}):
            self.client.api.remove_container(ct["Id"], force=True)

        def gone() -> bool:
            # the raw list: the SDK's containers.list inspects each one, and a task container may go in between
            if self.client.api.containers(all=True, filters={"label": f"com.docker.swarm.service.name={self.service}"}):
                return False
            if self._network() is not None:  # stack rm gives up on a network its last tasks still held
                _run("docker", "network", "rm", self.network, check=False)
            for vol in self.client.volumes.list():
                if vol.name == self.shared or vol.name.startswith(f"{self.service}-data-"):
                    try:
                        vol.remove(force=True)
                    except Exception:  # noqa: BLE001 - a container that just stopped still holds it
                        return False
            return self._network() is None
        try:
            wait_for(gone, 90, f"the stack {self.name}'s containers, network and volumes to go", step=0.5)
        finally:
            for net in self.client.networks.list(filters={"label": f"{LABEL}={self.name}"}):
                net.remove()
            if self.made_swarm:
                _run("docker", "swarm", "leave", "--force", check=False)
                if self.made_gwbridge:
                    _run("docker", "network", "rm", "docker_gwbridge", check=False)
                self.made_swarm = self.made_gwbridge = False
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)  # the secret files
            for n in self.nodes:
                n.state = "stopped"
