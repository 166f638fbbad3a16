"""jobgrid benchmark: workloads A-D on 1 and 3 local nodes next to ProcessPoolExecutor(2), a scaling
table (1/3/5 nodes) with CPU cost per job, and a queue-depth check (100,000 queued jobs).

    .venv/bin/python bench/run.py [--quick] [--peers] [--skip scaling,depth,...]

Nodes are real processes on loopback (harness.local.LocalCluster). Runners: 2 per node on 1 node
(= the 2 cores); 1 per node on 3 and 5 nodes (3-5 worker processes on 2 cores: enough to keep both
cores busy while the node event loops take their share; more would only add contention).
Results go to bench/results/<timestamp>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness.local import LocalCluster  # noqa: E402
import msgspec  # noqa: E402
from jobgrid import examples  # noqa: E402
from jobgrid.client import Client, pickle_spec  # noqa: E402

TARGETS = {"A_submit": 1500, "A_map": 2400, "B_p50": 2.5, "B_p99": 10.0, "C_wall": 2.2}
PEERS = {  # published figures of /work/shared/bench/peers (same machine class, medians of 3 runs)
    "ppe": {"A": 4814, "B": (0.39, 0.54), "C": 2.02},
    "celery": {"A": 296, "B": (5.0, 7.9), "C": 2.23},
    "dask": {"A": "305/393", "B": (12.3, 23.8), "C": 2.33},
    "rq": {"A": 77, "B": (19.6, 25.8), "C": 2.63},
}
CLK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, -(-len(s) * q // 100) - 1)] if s else float("nan")


# ---- CPU accounting from /proc ------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def group_cpu(roots: set[int]) -> dict[int, float]:
    """CPU seconds (user+sys, plus reaped children) of every live process descended from `roots`, by pid."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (f := _stat(int(d))):  # fields after comm: state ppid pgrp ... utime(11) stime(12)
            procs[int(d)] = (int(f[1]), (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / CLK)
    out = {}
    for pid, (ppid, cpu) in procs.items():
        p = pid
        while p > 1 and p not in roots:
            p = procs.get(p, (0, 0))[0]
        if p in roots:
            out[pid] = cpu
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- workloads ----------------------------------------------------------------------------------------
def warm(c: Client) -> None:
    c.map(examples.noop, range(4), timeout=60)


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


# ---- clusters ---------------------------------------------------------------------------------------------
class Grid:
    def __init__(self, nodes: int, runners: int, replicas: int, octet: int, extra: tuple[str, ...] = ()) -> None:
        self.dir = tempfile.mkdtemp(prefix="jg-bench-")
        self.cl = LocalCluster(Path(self.dir), replicas=replicas, runners=runners, first_octet=octet,
                               extra_args=list(extra), exit_with_parent=True)
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

    def pgids(self) -> set[int]:
        return {n.pid for n in self.cl.nodes if n.pid}


def run_grid(label: str, nodes: int, runners: int, replicas: int, octet: int, q: dict, out: dict) -> None:
    print(f"== {label}: {nodes} node(s), runners={runners}/node, R={replicas}", flush=True)
    g = Grid(nodes, runners, replicas, octet)
    with g as (cl, c):
        warm(c)
        r: dict = {}
        r["A_submit"] = wl_a_submit(c, q["A"]); print(f"  A submit {r['A_submit']:.0f} jobs/s", flush=True)
        r["A_map"] = wl_a_map(c, q["A"]); print(f"  A map    {r['A_map']:.0f} jobs/s", flush=True)
        r["B_p50"], r["B_p99"] = wl_b(c, q["B"]); print(f"  B {r['B_p50']:.2f}/{r['B_p99']:.2f} ms", flush=True)
        r["C_wall"] = wl_c(c, q["C"]); print(f"  C {r['C_wall']:.2f} s", flush=True)
        r["D"] = wl_d(c, cl, q["D"]); print(f"  D {r['D']}", flush=True)
    out[label] = r


def run_ppe(q: dict, out: dict) -> None:
    print("== ProcessPoolExecutor(2)", flush=True)
    r: dict = {}
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(examples.noop, [0, 1]))
        n = q["A"]
        t0 = time.perf_counter()
        futs = [ex.submit(examples.noop, i) for i in range(n)]
        [f.result() for f in futs]
        r["A_submit"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        list(ex.map(examples.noop, range(n), chunksize=1))
        r["A_map"] = n / (time.perf_counter() - t0)
        lat = []
        for i in range(q["B"]):
            t0 = time.perf_counter()
            ex.submit(examples.noop, i).result()
            lat.append((time.perf_counter() - t0) * 1000)
        r["B_p50"], r["B_p99"] = statistics.median(lat), pct(lat, 99)
        t0 = time.perf_counter()
        list(ex.map(examples.busy, [100] * q["C"], chunksize=1))
        r["C_wall"] = time.perf_counter() - t0
    print(f"  {r}", flush=True)
    out["ppe"] = r


def run_scaling(q: dict, out: dict) -> None:
    rows = []
    for i, nodes in enumerate((1, 3, 5)):
        runners = 2 if nodes == 1 else 1
        g = Grid(nodes, runners, min(3, nodes), 100 + i * 10)
        with g as (cl, c):
            warm(c)
            cpu0 = group_cpu(g.pgids())
            rate = wl_a_map(c, q["A"])
            cpu = cpu_delta(cpu0, group_cpu(g.pgids()))
        rows.append({"nodes": nodes, "runners": runners, "jobs_per_s": rate, "cpu_ms_per_job": cpu / q["A"] * 1000})
        print(f"  scaling {rows[-1]}", flush=True)
    out["scaling"] = rows


def _post(url: str, body: dict) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def run_depth(q: dict, out: dict) -> None:
    """A node with no runners: heartbeat-path RTT, submit and steal cost with an empty and a deep queue."""
    print(f"== queue depth ({q['depth']} queued jobs, --runners 0)", flush=True)
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
        specs = [pickle_spec(examples.noop, (i,), {}) for i in range(q["depth"])]
        for i in range(0, len(specs), 5000):
            c.submit_many(specs[i:i + 5000])
        fill = time.perf_counter() - t0
        deep = probe()
        deep["queued"] = cl.get(node, "/state")["counts"]
        print(f"  deep  {deep} (filled in {fill:.1f} s)", flush=True)
    out["depth"] = {"empty": empty, "deep": deep, "fill_s": fill, "n": q["depth"]}


# ---- peers ---------------------------------------------------------------------------------------------------
def run_peers(out: dict) -> None:
    venv = Path("/tmp/jobgrid-peers")
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "celery", "redis", "rq", "dask[distributed]",
                        "cloudpickle"], check=True)
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=True)
    env = dict(os.environ, PEERS_WORK=str(venv / "work"))
    r = subprocess.run([str(py), str(HERE / "peers" / "run_all.py"), "--reps", "1"], capture_output=True, text=True,
                       env=env)
    print(r.stdout[-3000:], r.stderr[-2000:], flush=True)
    try:
        out["peers_measured"] = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        out["peers_measured"] = {"error": r.stderr[-500:]}


# ---- report ------------------------------------------------------------------------------------------------------
def report(res: dict, stamp: str) -> None:
    from rich.console import Console
    from rich.table import Table

    ppe = res.get("ppe", {})
    t = Table(title=f"jobgrid benchmark {stamp}")
    t.add_column("figure"); t.add_column("target")
    cols = [k for k in ("1 node", "3 nodes R=3", "ppe") if k in res]
    for k in cols:
        t.add_column(k, justify="right")
    t.add_column("peers (published)")

    def cell(v: float | None, key: str, higher: bool, fmt: str) -> str:
        if v is None:
            return "-"
        s = format(v, fmt)
        base = ppe.get(key)
        if base:
            s += f" ({v / base:.2f}x ppe)"
        tgt = TARGETS.get(key)
        if tgt is not None:
            s += " ok" if (v >= tgt if higher else v <= tgt) else " MISS"
        return s

    for key, label, higher, fmt, peer in [
        ("A_submit", "A submit jobs/s", True, ".0f", "ppe 4814, celery 296, dask 305, rq 77"),
        ("A_map", "A map jobs/s", True, ".0f", "dask 393"),
        ("B_p50", "B p50 ms", False, ".2f", "ppe .39, celery 5.0, dask 12.3, rq 19.6"),
        ("B_p99", "B p99 ms", False, ".2f", "ppe .54, celery 7.9, dask 23.8, rq 25.8"),
        ("C_wall", "C wall s", False, ".2f", "ppe 2.02, celery 2.23, dask 2.33, rq 2.63")]:
        tgt = TARGETS[key]
        t.add_row(label, (">= " if higher else "<= ") + str(tgt),
                  *[cell(res[k].get(key), key, higher, fmt) if k != "ppe" else format(res[k][key], fmt) for k in cols],
                  peer)
    d_cells = []
    for k in cols:
        d = res[k].get("D")
        d_cells.append("-" if not d else f"{d['ok']} ok/{d['failed']} failed/{d['reruns']} re-run/{d['duplicates']} dup"
                       + (" ok" if d["ok"] == 20 and d["reruns"] <= 1 and d["duplicates"] == 0 else " MISS"))
    t.add_row("D worker SIGKILL", "20 ok, <=1 re-run, 0 dup", *d_cells, "celery/rq/dask: see peers README")
    Console(width=200).print(t)
    if "scaling" in res:
        s = Table(title="scaling (A via map)")
        for c_ in ("nodes", "runners/node", "jobs/s", "CPU ms/job"):
            s.add_column(c_, justify="right")
        for row in res["scaling"]:
            s.add_row(str(row["nodes"]), str(row["runners"]), f"{row['jobs_per_s']:.0f}", f"{row['cpu_ms_per_job']:.2f}")
        Console(width=200).print(s)
    if "depth" in res:
        d = res["depth"]
        s = Table(title=f"queue depth: empty vs {d['n']} queued (runners 0)")
        for c_ in ("", "GET /servers ms", "submit ms", "steal ms", "RSS MB"):
            s.add_column(c_, justify="right")
        for k in ("empty", "deep"):
            v = d[k]
            s.add_row(k, f"{v['servers_rtt_ms']:.2f}", f"{v['submit_ms']:.2f}", f"{v['steal_ms']:.2f}",
                      f"{v['rss_mb']:.0f}")
        Console(width=200).print(s)


    peers = res.get("peers_measured")
    if isinstance(peers, dict) and "error" not in peers:
        s = Table(title="peers measured in this run (medians; Celery/RQ on Redis, Dask LocalCluster)")
        s.add_column("label"); s.add_column("figures")
        for label, med in peers.items():
            s.add_row(label, ", ".join(f"{k}={v}" for k, v in med.items()))
        Console(width=200).print(s)


def chart(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [k for k in ("1 node", "3 nodes R=3", "ppe") if k in res]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (key, title) in zip(axes, [("A_submit", "A submit jobs/s"), ("A_map", "A map jobs/s"),
                                       ("B_p50", "B p50 ms"), ("C_wall", "C wall s")]):
        ax.bar(cols, [res[k].get(key, 0) for k in cols], color=["tab:blue", "tab:green", "tab:gray"][:len(cols)])
        if key in TARGETS:
            ax.axhline(TARGETS[key], color="red", ls="--", label="target")
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller counts (about a minute)")
    p.add_argument("--peers", action="store_true", help="also run Celery, RQ and Dask (installs them)")
    p.add_argument("--skip", default="", help="comma list of: 1,3,ppe,scaling,depth")
    a = p.parse_args()
    q = ({"A": 1000, "B": 100, "C": 20, "D": 20, "depth": 20_000} if a.quick else
         {"A": 5000, "B": 200, "C": 40, "D": 20, "depth": 100_000})
    skip = set(filter(None, a.skip.split(",")))
    res: dict = {"quick": a.quick, "counts": q, "cpus": os.cpu_count()}
    if "ppe" not in skip:
        run_ppe(q, res)
    if "1" not in skip:
        run_grid("1 node", 1, 2, 1, 60, q, res)
    if "3" not in skip:
        run_grid("3 nodes R=3", 3, 1, 3, 70, q, res)
    if "scaling" not in skip:
        run_scaling(q, res)
    if "depth" not in skip:
        run_depth(q, res)
    if a.peers:
        run_peers(res)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = HERE / "results"
    outdir.mkdir(exist_ok=True)
    (outdir / f"{stamp}.json").write_text(json.dumps(res, indent=2, default=str))
    chart(res, outdir / f"{stamp}.png")
    report(res, stamp)
    print(f"wrote {outdir / stamp}.json and .png")


if __name__ == "__main__":
    main()
