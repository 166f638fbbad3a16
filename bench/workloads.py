"""The jobgrid side of workloads A-E and the depth check, on real node processes (harness.local.LocalCluster).

Every workload here has a twin in bench/peers (the same counts from bench/peers/common.py where they
overlap); bench/run.py runs both in one process and compares them.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "peers"))

import cloudpickle  # noqa: E402
import msgspec  # noqa: E402
from harness.local import LocalCluster  # noqa: E402
from jobgrid import examples  # noqa: E402
from jobgrid.client import Client, pickle_spec  # noqa: E402

import common as peers_common  # noqa: E402  (bench/peers/common.py: workload E, shared with the peers)
import peer_tasks  # noqa: E402

from procstat import cpu_split, group_cpu, rss_mb  # noqa: E402

# the data workload's functions travel by value: the node's workers cannot import bench/peers
cloudpickle.register_pickle_by_value(peer_tasks)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, as bench/peers/common.py computes it for the peers."""
    s = sorted(values)
    return s[max(0, -(-len(s) * q // 100) - 1)] if s else float("nan")


class Grid:
    """A fresh local grid for one block of workloads: `with Grid(...) as (cluster, client)`."""

    def __init__(self, nodes: int, runners: int, replicas: int, octet: int, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="jg-bench-")
        self.cl = LocalCluster(Path(self.dir), replicas=replicas, runners=runners, first_octet=octet,
                               extra_args=list(extra), exit_with_parent=True, env=env)
        self.nodes = nodes

    def __enter__(self) -> tuple[LocalCluster, Client]:
        self.cl.up(self.nodes, timeout=90)
        self.client = Client([n.url for n in self.cl.nodes], timeout=60)
        return self.cl, self.client

    def __exit__(self, *exc: object) -> None:
        try:
            self.client.close()
        finally:
            self.cl.stop()

    def pids(self) -> set[int]:
        """The node processes (their workers are their descendants)."""
        return {n.pid for n in self.cl.nodes if n.pid}

    def rss(self) -> list[float]:
        return [round(rss_mb(p), 1) for p in sorted(self.pids())]


def warm(c: Client) -> None:
    c.map(examples.noop, range(4), timeout=60)


def measured(g: Grid, n: int, fn, *args) -> tuple[float, float, float]:
    """(fn's figure, node CPU ms per job, worker CPU ms per job) for a workload of `n` jobs."""
    roots = g.pids()
    before = group_cpu(roots)
    figure = fn(*args)
    nodes, workers = cpu_split(roots, before, group_cpu(roots))
    return figure, nodes / n * 1000, workers / n * 1000


# ---- A-D --------------------------------------------------------------------------------------------
def wl_a_submit(c: Client, n: int) -> float:
    t0 = time.perf_counter()
    futs = [c.submit(examples.noop, i) for i in range(n)]
    out = [f.result(120) for f in futs]
    dt = time.perf_counter() - t0
    assert out == list(range(n))
    return n / dt


def wl_a_map(c: Client, n: int) -> float:
    t0 = time.perf_counter()
    out = c.map(examples.noop, range(n), timeout=120)
    dt = time.perf_counter() - t0
    assert out == list(range(n))
    return n / dt


def wl_b(c: Client, n: int) -> tuple[float, float]:
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        assert c.submit(examples.noop, i).result(30) == i
        lat.append(time.perf_counter() - t0)
    ms = [x * 1000 for x in lat]
    return statistics.median(ms), pct(ms, 99)


def wl_c(c: Client, n: int) -> float:
    t0 = time.perf_counter()
    c.map(examples.busy, [100] * n, timeout=120)
    return time.perf_counter() - t0


def wl_d(c: Client, cl: LocalCluster, n: int) -> dict:
    """n x 2 s sleeps; 1 s in, SIGKILL one busy worker process; count outcomes and re-runs."""
    started0 = sum(s.get("started_jobs", 0) for s in cl.states().values())
    futs = c.submit_many([pickle_spec(examples.sleep, (2.0, i), {}) for i in range(n)])
    time.sleep(1.0)  # the fault is injected at a fixed point of the workload, by design
    killed = None
    end = time.monotonic() + 10
    while killed is None and time.monotonic() < end:
        for st in cl.states().values():
            busy = [r for r in st["runners"] if r["state"] == "busy" and r["job_id"]]
            if busy:
                killed = busy[0]
                os.kill(busy[0]["pid"], signal.SIGKILL)
                break
        else:
            time.sleep(0.05)
    ok = failed = 0
    values = []
    for f in futs:
        try:
            values.append(f.result(90))
            ok += 1
        except Exception:  # noqa: BLE001 - counted as failed
            failed += 1
    states = cl.states().values()
    started = sum(s.get("started_jobs", 0) for s in states) - started0
    dups = sum(s.get("duplicates_dropped", 0) for s in states)
    return {"ok": ok, "failed": failed, "reruns": started - n, "duplicates": dups + (len(values) - len(set(values))),
            "killed_pid": killed and killed["pid"]}


# ---- E: data-heavy jobs ---------------------------------------------------------------------------------
def wl_e(g: Grid, c: Client) -> dict:
    """bench/peers/common.data_workload on the grid, with the node processes' CPU and RSS around it."""
    roots = g.pids()
    rss_before = g.rss()
    before = group_cpu(roots)
    epoch0 = max(s.get("epoch", 0) for s in g.cl.states().values())
    try:
        out = peers_common.data_workload(lambda fn, *xs: c.submit(fn, *xs).result(300),
                                         lambda fn, xs: c.map(fn, xs, timeout=600))
    except Exception as e:  # noqa: BLE001 - a failed data workload is a finding, reported as such
        out = {"E_error": f"{type(e).__name__}: {e}"}
    nodes, workers = cpu_split(roots, before, group_cpu(roots))
    # ring changes during E: a node whose event loop stalls past the failure timeout is declared dead
    out["E_ring_changes"] = max(s.get("epoch", 0) for s in g.cl.states().values()) - epoch0
    out["E_rss_after"] = g.rss()  # right after the last result
    time.sleep(2.0)  # idle: what the nodes keep once the data has gone through
    out.update(E_rss_before=rss_before, E_rss_idle=g.rss(), E_node_cpu_s=round(nodes, 2),
               E_worker_cpu_s=round(workers, 2))
    return out


# ---- queue depth -----------------------------------------------------------------------------------------
def _post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def depth(n: int) -> dict:
    """A node with no runners: heartbeat-path RTT, submit and steal cost with an empty and a deep queue."""
    g = Grid(1, 0, 1, 150)
    with g as (cl, c):
        node = cl.nodes[0]
        nid = cl.get(node, "/state")["id"]

        def probe() -> dict:
            rtt = []
            for _ in range(50):
                t0 = time.perf_counter(); _get(node.url + "/servers"); rtt.append((time.perf_counter() - t0) * 1000)
            sub = []
            for i in range(50):  # one acknowledged submission: HTTP, SQLite group commit, reply
                body = {"jobs": [msgspec.to_builtins(pickle_spec(examples.noop, (i,), {}))], "retry": False}
                t0 = time.perf_counter(); _post(node.url + "/jobs", body); sub.append((time.perf_counter() - t0) * 1000)
            st = []
            epoch = cl.get(node, "/state")["epoch"]
            for _ in range(50):
                t0 = time.perf_counter()
                _post(node.url + "/peer/steal", {"runner": nid, "epoch": epoch, "max_jobs": 1})
                st.append((time.perf_counter() - t0) * 1000)
            return {"servers_rtt_ms": statistics.median(rtt), "submit_ms": statistics.median(sub),
                    "steal_ms": statistics.median(st), "rss_mb": rss_mb(node.pid)}

        empty = probe()
        print(f"  empty {empty}", flush=True)
        t0 = time.perf_counter()
        specs = [pickle_spec(examples.noop, (i,), {}) for i in range(n)]
        for i in range(0, len(specs), 5000):
            c.submit_many(specs[i:i + 5000])
        fill = time.perf_counter() - t0
        deep = probe()
        deep["queued"] = cl.get(node, "/state")["counts"]
        print(f"  deep  {deep} (filled in {fill:.1f} s)", flush=True)
    return {"empty": empty, "deep": deep, "fill_s": fill, "n": n}
