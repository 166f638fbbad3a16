"""Making, saving and showing the CLI's cluster: backend and links choice, the state file, the node table.

`harness up` saves the cluster in .harness/state.json (mode 0600: it holds the cluster token) so the
verbs after it find it; each backend writes and reads its own part (`to_state` / `from_state`).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobgrid.ring import RING_SIZE

from .errors import DockerUnavailable, HarnessError
from .local import LocalCluster
from .workload import remember_ids

STATE_DIR = Path(os.environ.get("HARNESS_STATE_DIR", ".harness"))


def state_path() -> Path:
    return STATE_DIR / "state.json"


def save_state(cluster: Any) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    st = cluster.to_state()
    remember_ids(cluster)
    st["past_ids"] = cluster.past_ids
    st["faults"] = cluster.faults[-50:]
    p = state_path()
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(st, f, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)


def load_cluster(required: bool = True) -> Any:
    p = state_path()
    if not p.exists():
        if required:
            raise HarnessError("no cluster is up here (no .harness/state.json): run `harness up` first")
        return None
    st = json.loads(p.read_text())
    if st["backend"] == "docker":
        from .docker_backend import DockerCluster  # noqa: PLC0415
        c = DockerCluster.from_state(st)
    elif st["backend"] == "swarm":
        from .swarm_backend import SwarmCluster  # noqa: PLC0415
        c = SwarmCluster.from_state(st)
    else:
        c = LocalCluster.from_state(st)
    c.faults = st.get("faults", [])
    c.past_ids = st.get("past_ids", {})
    return c


def docker_answers() -> bool:
    try:
        from .images import docker_client  # noqa: PLC0415
        docker_client(timeout=5).ping()
        return True
    except (DockerUnavailable, Exception):  # noqa: BLE001
        return False


def pick_backend(name: str | None) -> str:
    if name:
        return name
    return "docker" if docker_answers() else "local"


def pick_links(name: str | None, *, needs_proxies: bool = False, backend: str | None = None) -> str:
    """"toxiproxy" when asked, or by default when a Toxiproxy server can be had; else "direct"."""
    from .toxiserver import HOW_TO_GET, available  # noqa: PLC0415
    if backend == "swarm":
        if name == "toxiproxy" or needs_proxies:
            raise HarnessError("the swarm backend has direct links only (no Toxiproxy on the overlay network): "
                               "use its kill, pause, restart and iptables partitions, or --backend docker")
        return "direct"
    if name == "direct" and needs_proxies:
        raise HarnessError("these faults need --links toxiproxy")
    if name:
        if name == "toxiproxy" and not available():
            raise HarnessError("--links toxiproxy: " + HOW_TO_GET)
        return name
    if available():
        return "toxiproxy"
    if needs_proxies:
        raise HarnessError("these faults need Toxiproxy: " + HOW_TO_GET)
    return "direct"


def make_cluster(backend: str, *, replicas: int, runners: int, workdir: Path | None = None,
                 heartbeat: float = 0.5, failure_timeout: float = 2.0, links: str = "direct",
                 console: Console | None = None) -> Any:
    token = secrets.token_urlsafe(24)
    if backend == "docker":
        from .docker_backend import DockerCluster  # noqa: PLC0415
        from .images import NODE_TAG, ensure_images  # noqa: PLC0415
        if console is not None:
            with console.status(f"building images ({NODE_TAG})"):
                ensure_images()
        else:
            ensure_images()
        return DockerCluster(replicas=replicas, runners=runners, token=token, heartbeat_interval=heartbeat,
                             failure_timeout=failure_timeout, links=links)
    if backend == "swarm":
        from .images import NODE_TAG, ensure_images  # noqa: PLC0415
        from .swarm_backend import SwarmCluster  # noqa: PLC0415
        if console is not None:
            with console.status(f"building images ({NODE_TAG})"):
                ensure_images()
        else:
            ensure_images()
        return SwarmCluster(replicas=replicas, runners=runners, token=token, heartbeat_interval=heartbeat,
                            failure_timeout=failure_timeout, links=links)
    if backend == "local":
        wd = workdir or Path(tempfile.mkdtemp(prefix="harness-local-"))
        # a 127.0.x.0/24 block of its own, away from the 127.0.0.x the tests use
        return LocalCluster(wd, replicas=replicas, runners=runners, token=token, heartbeat_interval=heartbeat,
                            failure_timeout=failure_timeout, first_octet=256 * (2 + os.getpid() % 30) + 10,
                            links=links)
    raise HarnessError(f"unknown backend {backend!r}: docker, swarm or local")


def node_table(cluster: Any) -> Table:
    states = cluster.states()
    t = Table(title=f"jobgrid cluster ({cluster.backend}, {getattr(cluster, 'links', 'direct')} links)")
    for col in ("node", "address", "clients dial", "state", "id", "ring position (of 1)", "active", "backup",
                "epoch"):
        t.add_column(col)
    dial = {n.name: cluster.dial_address(n) for n in cluster.nodes}
    for n in cluster.nodes:
        st = states.get(n.name, {})
        counts = st.get("counts", {})
        loc = ""
        for m in (st.get("ring") or {}).get("members", []) if isinstance(st.get("ring"), dict) else []:
            if m.get("id") == st.get("id"):
                loc = f"{int(m.get('location', 0)) / RING_SIZE:.3f}"
        t.add_row(n.name, f"{n.host}:{n.port}", dial[n.name].split("://")[-1], n.state,
                  st.get("id", n.node_id or ""), loc,
                  str(counts.get("active", counts.get("activeQueue", ""))),
                  str(counts.get("backup", counts.get("backupQueue", ""))), str(st.get("epoch", "")))
    return t


def toxics_table(cluster: Any) -> Table | None:
    """The toxics and disabled proxies in force on the cluster's links, or None without proxies."""
    if cluster.proxies is None:
        return None
    t = Table(title="active toxics (Toxiproxy)")
    for col in ("link", "toxic", "type", "stream", "attributes"):
        t.add_column(col)
    for a in cluster.proxies.active():
        t.add_row(a["link"], a["toxic"], a["type"], a["stream"],
                  ", ".join(f"{k}={v}" for k, v in a["attributes"].items()))
    return t


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
