"""Membership at scale on the all-to-all heartbeat design: local grids of 8, 16 and 32 nodes.

    .venv/bin/python bench/scale.py [--sizes 8,16,32] [--window 30] [--load-seconds 120] [--plot docs/scale.png]
    .venv/bin/python bench/scale.py --replot docs/scale-results.json --plot docs/scale.png
    make scale

For each size N, two grids of real node processes on this machine (harness.local.LocalCluster, default
timing: 0.5 s heartbeats, 2 s failure timeout, R=3), each stopped before the next starts:

1. runners 0, no jobs (so what the nodes spend is membership):
   - formation: a seed, N-9 sequential joiners (N >= 16), then the last 8 started at once (for N = 8:
     the seed and 7 at once); the time from their spawn until every server list is the same N-member ring;
   - identical server lists: every node's (epoch, members) view is the same;
   - heartbeat CPU: each node's CPU time over a quiet window (`/proc/PID/task/*/schedstat`, ns), next to
     a single idle node (a 1-node grid: no peers, no heartbeats) measured over the same window: the
     baseline, and the ratio against it;
   - detection: SIGKILL a non-leader node, then the leader; the time until every survivor's server
     list has dropped it (polled), and each survivor's own `ring_changed` event time (from /state).
2. runners 1 each, under a job load (closed loop of 0.1 s sleep jobs, 4 clients on different nodes,
   about N jobs in flight) for --load-seconds: ring epochs and removal events on every node (any ring
   change in a steady grid is a false removal or a rejoin after one), suspect sightings, jobs done.

Prints a table and writes bench/results/scale-<timestamp>.json (and, with --plot, the figure). Not part
of `make test`: it takes ~15 minutes and needs a quiet machine (it records the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from harness.backend import wait_for  # noqa: E402
from harness.local import LocalCluster, NodeHandle, listen_port  # noqa: E402
from jobgrid.client import Client, build_spec  # noqa: E402

HEARTBEAT = 0.5
FAILURE_TIMEOUT = 2.0
STORM = 8


# ---- measuring ----------------------------------------------------------------------------------------
def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of `pid` (schedstat: finer than the 10 ms ticks of /proc/PID/stat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for t in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


def block(slot: int) -> int:
    """Address block 127.0.(240 + slot).10-: clear of the harness's and the tests' blocks (slot 0-13)."""
    return 256 * (240 + slot % 14) + 10


def make_cluster(root: Path, name: str, n: int, runners: int, slot: int) -> LocalCluster:
    octet = block(slot)
    hosts = [f"127.0.{octet // 256}.{octet % 256 + i}" for i in range(n)]
    return LocalCluster(root / name, replicas=3, runners=runners, heartbeat_interval=HEARTBEAT,
                        failure_timeout=FAILURE_TIMEOUT, first_octet=octet, port=listen_port(hosts),
                        exit_with_parent=True)


def lists_without(c: LocalCluster, nodes: list[NodeHandle], gone: NodeHandle) -> bool:
    lists = c.server_lists(nodes)
    return len(lists) == len(nodes) and all(
        all(s["ip"] != gone.host for s in sl["servers"]) for sl in lists.values())


# ---- phase 1: formation, identical lists, heartbeat CPU, detection ----------------------------------------
def form(c: LocalCluster, n: int) -> dict:
    t = time.monotonic()
    seed = c.start(c.add_node())
    c.wait_healthy(seed, 60)
    seed_start = time.monotonic() - t
    base = max(1, n - STORM)
    seq = []
    for _ in range(base - 1):
        t = time.monotonic()
        node = c.start(c.add_node(), join=seed)
        c.wait_healthy(node, 90)
        seq.append(time.monotonic() - t)
    c.wait_converged(60)
    storm = [c.add_node() for _ in range(n - base)]
    t = time.monotonic()
    for node in storm:
        c.start(node, join=seed)
    c.wait_converged(180)
    formed = time.monotonic() - t
    lists = c.server_lists()
    views = {(sl["epoch"], frozenset((s["id"], s["ip"], s["location"]) for s in sl["servers"]))
             for sl in lists.values()}
    return {"seed_start_s": seed_start, "sequential_joins_s": seq, "storm_joiners": len(storm),
            "storm_formation_s": formed, "lists": len(lists), "distinct_views": len(views),
            "members_per_list": sorted({len(sl["servers"]) for sl in lists.values()}),
            "epoch": next(iter(views))[0]}


def beats_sent(c: LocalCluster) -> dict[str, float]:
    """Heartbeats each node sent and got an answer to (the count of its heartbeat_rtt histogram)."""
    out = {}
    for n in c.live():
        with urllib.request.urlopen(n.url + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("jobgrid_heartbeat_rtt_seconds_count"):
                    out[n.name] = float(line.split()[-1])
    return out


def heartbeat_cpu(c: LocalCluster, idle: NodeHandle, window: float) -> dict:
    pids = {n.name: n.pid for n in c.nodes}
    t_beats, beats0 = time.monotonic(), beats_sent(c)
    before = {k: cpu_ns(p) for k, p in pids.items()}
    b0, busy0 = cpu_ns(idle.pid), machine_busy()
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    time.sleep(window)  # a quiet window: nothing is polled meanwhile
    dt = time.monotonic() - t0
    after = {k: cpu_ns(p) for k, p in pids.items()}
    b1, busy1 = cpu_ns(idle.pid), machine_busy()
    beats1 = beats_sent(c)
    beat_rate = sum(beats1[k] - beats0[k] for k in pids) / len(pids) / (time.monotonic() - t_beats)
    per_node = sorted((after[k] - before[k]) / 1e9 / dt for k in pids)
    baseline = (b1 - b0) / 1e9 / dt
    mean = sum(per_node) / len(per_node)
    nominal = (len(pids) - 1) / HEARTBEAT
    return {"window_s": dt, "per_node_core": per_node, "mean_node_core": mean, "total_core": sum(per_node),
            "baseline_core": baseline, "ratio_to_baseline": mean / baseline if baseline > 0 else None,
            "heartbeat_core": mean - baseline, "beats_per_s": beat_rate, "nominal_beats_per_s": nominal,
            # each node sends `beat_rate` beats a second and answers as many: the CPU of one such pair
            "core_s_per_beat": (mean - baseline) / beat_rate if beat_rate > 0 else None,
            "machine_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), "loadavg_1m": load}


def detect(c: LocalCluster, victim: NodeHandle) -> dict:
    vid = victim.node_id
    survivors = [n for n in c.live() if n is not victim]
    t_wall = time.time()
    t0 = time.monotonic()
    c.kill(victim)
    wait_for(lambda: lists_without(c, survivors, victim), 60, f"every list to drop {victim.name}", step=0.02)
    polled = time.monotonic() - t0
    per_node = []
    for n in survivors:
        evs = [e for e in c.get(n, "/state")["events"]
               if e["kind"] == "ring_changed" and vid in e.get("removed", []) and e["at"] >= t_wall]
        if evs:
            per_node.append(min(e["at"] for e in evs) - t_wall)
    return {"victim": victim.name, "all_lists_dropped_s": polled,
            "event_max_s": max(per_node) if per_node else None,
            "event_median_s": sorted(per_node)[len(per_node) // 2] if per_node else None,
            "events_seen": len(per_node)}


def leader_of(c: LocalCluster) -> NodeHandle:
    sl = c.get(c.live()[0], "/servers")
    first = min(sl["servers"], key=lambda s: s["location"])
    return next(n for n in c.live() if n.host == first["ip"])


def phase_membership(root: Path, n: int, idle: NodeHandle, window: float) -> dict:
    c = make_cluster(root, f"m{n}", n, runners=0, slot=1 + n % 6)
    try:
        out = form(c, n)
        print(f"  formed: seed {out['seed_start_s']:.2f} s, {out['storm_joiners']} joiners at once "
              f"{out['storm_formation_s']:.2f} s; {out['lists']} lists, {out['distinct_views']} distinct view(s), "
              f"epoch {out['epoch']}", flush=True)
        time.sleep(3.0)  # settle: joins' resyncs done, connections open
        out["cpu"] = cpu = heartbeat_cpu(c, idle, window)
        print(f"  CPU per node {1000 * cpu['mean_node_core']:.1f} m-core (baseline idle node "
              f"{1000 * cpu['baseline_core']:.2f}, ratio {cpu['ratio_to_baseline']:.1f}), total "
              f"{cpu['total_core']:.2f} cores, machine busy {100 * cpu['machine_busy']:.0f}%, "
              f"load {cpu['loadavg_1m']:.2f}; {cpu['beats_per_s']:.1f} beats/s per node (nominal "
              f"{cpu['nominal_beats_per_s']:.0f}), {1e6 * cpu['core_s_per_beat']:.0f} us of CPU per beat sent and "
              f"answered", flush=True)
        leader = leader_of(c)
        victim = next(x for x in reversed(c.live()) if x is not leader)
        out["detect_member"] = d1 = detect(c, victim)
        kills = [("member", d1)]
        if 2 * (n - 2) > n - 1:  # the survivors of both kills still form a majority of the ring
            out["detect_leader"] = d2 = detect(c, leader)
            kills.append(("leader", d2))
        for what, d in kills:
            print(f"  SIGKILL {what} {d['victim']}: all lists dropped it after {d['all_lists_dropped_s']:.2f} s "
                  f"(ring_changed events: median {d['event_median_s']:.2f}, max {d['event_max_s']:.2f} s)",
                  flush=True)
        return out
    finally:
        c.stop()


# ---- phase 2: false removals under a job load ----------------------------------------------------------
def load_loop(url: str, batch: int, end: float, counts: dict, lock: threading.Lock) -> None:
    i = 0
    with Client([url], timeout=60) as client:
        while time.monotonic() < end:
            specs = [build_spec("call", target="jobgrid.examples:sleep", args=[0.1, i + k]) for k in range(batch)]
            i += batch
            futs = client.submit_many(specs)
            ok = bad = 0
            for k, f in enumerate(futs):
                try:
                    ok += f.result(120) == specs[k].args[1]
                except Exception:  # noqa: BLE001 - counted
                    bad += 1
            with lock:
                counts["ok"] += ok
                counts["failed"] += bad


def phase_load(root: Path, n: int, seconds: float) -> dict:
    c = make_cluster(root, f"l{n}", n, runners=1, slot=7 + n % 6)
    try:
        c.up(n, timeout=120)
        time.sleep(2.0)
        epochs0 = {name: st["epoch"] for name, st in c.states().items()}
        t_wall = time.time()
        busy0 = machine_busy()
        counts = {"ok": 0, "failed": 0}
        lock = threading.Lock()
        end = time.monotonic() + seconds
        entry = [c.nodes[i * n // 4] for i in range(4)]
        threads = [threading.Thread(target=load_loop, args=(e.url, max(1, n // 4), end, counts, lock), daemon=True)
                   for e in entry]
        for th in threads:
            th.start()
        removals: set[tuple] = set()
        suspects = 0
        max_age = 0.0
        while time.monotonic() < end:
            time.sleep(min(5.0, max(0.0, end - time.monotonic())))
            for name, st in c.states().items():
                for e in st["events"]:
                    if e["at"] >= t_wall and e["kind"] in ("ring_changed", "declared_dead", "removed_from_ring"):
                        removals.add((name, e["kind"], e["at"], tuple(e.get("removed", e.get("dead", [])))))
            now = time.time()
            for sl in c.server_lists().values():
                for s in sl["servers"]:
                    suspects += s["status"] != "alive"
                    if s["timestamp"]:
                        max_age = max(max_age, now - s["timestamp"])
        for th in threads:
            th.join(180)
        busy1 = machine_busy()
        epochs1 = {name: st["epoch"] for name, st in c.states().items()}
        out = {"seconds": seconds, "jobs_ok": counts["ok"], "jobs_failed": counts["failed"],
               "jobs_per_s": counts["ok"] / seconds, "epochs_before": sorted(set(epochs0.values())),
               "epochs_after": sorted(set(epochs1.values())), "ring_events": len(removals),
               "false_removals": sum(1 for r in removals if r[1] == "declared_dead"),
               "suspect_sightings": suspects, "max_heartbeat_age_s": max_age,
               "machine_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
               "converged_after": c.converged(), "loadavg_1m_end": os.getloadavg()[0]}
        print(f"  load {seconds:.0f} s: {out['jobs_ok']} jobs ok ({out['jobs_per_s']:.0f}/s), {out['jobs_failed']} "
              f"failed; epochs {out['epochs_before']} -> {out['epochs_after']}, ring events {out['ring_events']}, "
              f"false removals {out['false_removals']}, suspect sightings {suspects}, max heartbeat age "
              f"{max_age:.2f} s, machine busy {100 * out['machine_busy']:.0f}%", flush=True)
        return out
    finally:
        c.stop()


# ---- growth -------------------------------------------------------------------------------------------
def growth(results: dict[int, dict]) -> dict:
    """Fit heartbeat CPU per node = b * (N - 1) (each node sends and answers N-1 beats per interval)."""
    pts = [(n, r["membership"]["cpu"]["heartbeat_core"]) for n, r in results.items()]
    b = sum(h * (n - 1) for n, h in pts) / sum((n - 1) ** 2 for n, _ in pts)
    per_beat = [r["membership"]["cpu"]["core_s_per_beat"] for r in results.values()]
    per_beat = [x for x in per_beat if x]
    beat = sum(per_beat) / len(per_beat) if per_beat else None
    return {"core_per_peer": b, "nodes_at_tenth_core_per_node": 1 + 0.1 / b if b > 0 else None,
            "core_s_per_beat": beat,
            # at the nominal rate ((N-1) / interval beats sent and answered per node per second)
            "nodes_at_tenth_core_per_node_from_beat_cost": 1 + 0.1 * HEARTBEAT / beat if beat else None,
            "nodes_saturating_2_cores_on_one_host": (1 + (1 + 8 / b) ** 0.5) / 2 if b > 0 else None,
            "model": "heartbeat core per node = b (N - 1); total = b N (N - 1)"}


def plot(results: dict[int, dict], fit: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - only for --plot
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    ns = sorted(results)
    m = [results[n]["membership"] for n in ns]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    per = [1000 * r["cpu"]["heartbeat_core"] for r in m]
    tot = [r["cpu"]["total_core"] - n * r["cpu"]["baseline_core"] for n, r in zip(ns, m)]
    star = fit["nodes_at_tenth_core_per_node"] or max(ns)
    xs = list(range(2, int(max(max(ns), star) * 1.1) + 2))
    ax[0].plot(ns, per, "o-", label="measured: node CPU - idle node")
    ax[0].plot(xs, [1000 * fit["core_per_peer"] * (x - 1) for x in xs], "--", label="fit b (N-1)")
    ax[0].axhline(100, color="grey", lw=0.8)
    ax[0].annotate(f"0.1 core at N = {star:.0f}", (star, 100), textcoords="offset points", xytext=(-90, 8))
    ax[0].set(title="heartbeat CPU per node", xlabel="nodes", ylabel="milli-cores")
    ax[0].legend()
    xs = list(range(2, max(ns) + 5))
    ax[1].plot(ns, tot, "o-", label="measured")
    ax[1].plot(xs, [fit["core_per_peer"] * x * (x - 1) for x in xs], "--", label="fit b N (N-1)")
    ax[1].set(title="heartbeat CPU, whole grid", xlabel="nodes", ylabel="cores")
    ax[1].legend()
    ax[2].plot(ns, [r["storm_formation_s"] for r in m], "o-", label="last joiners at once -> one ring")
    ax[2].plot(ns, [r["detect_member"]["event_max_s"] for r in m], "s-", label="SIGKILL member -> dropped everywhere")
    lead = [(n, r["detect_leader"]["event_max_s"]) for n, r in zip(ns, m) if "detect_leader" in r]
    ax[2].plot([x for x, _ in lead], [y for _, y in lead], "^-", label="SIGKILL leader -> dropped everywhere")
    ax[2].set(title="formation and detection", xlabel="nodes", ylabel="seconds")
    ax[2].legend(fontsize=8)
    for a in ax[1:]:
        a.set_xticks(ns)
    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle("jobgrid membership, all-to-all heartbeats (0.5 s, failure timeout 2 s), local processes on 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8,16,32")
    ap.add_argument("--window", type=float, default=30.0, help="seconds of the quiet CPU window")
    ap.add_argument("--load-seconds", type=float, default=120.0)
    ap.add_argument("--no-load", action="store_true", help="skip the job-load phase")
    ap.add_argument("--plot", type=Path, help="also write the figure here (PNG)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="only draw --plot from an earlier run's JSON")
    a = ap.parse_args(argv)
    if a.replot:
        if not a.plot:
            raise SystemExit("--replot needs --plot FILE")
        d = json.loads(a.replot.read_text())
        plot({int(k): v for k, v in d["sizes"].items()}, d["growth"], a.plot)
        print(f"wrote {a.plot}")
        return 0
    sizes = [int(x) for x in a.sizes.split(",")]
    if any(n < 2 for n in sizes):
        raise SystemExit("--sizes: every grid needs at least 2 nodes")
    root = Path(tempfile.mkdtemp(prefix="jg-scale-"))
    idle_cluster = make_cluster(root, "idle", 1, runners=0, slot=0)
    results: dict[int, dict] = {}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    try:
        idle = idle_cluster.start(idle_cluster.add_node())
        idle_cluster.wait_healthy(idle, 60)
        for n in sizes:
            print(f"== {n} nodes", flush=True)
            results[n] = {"membership": phase_membership(root, n, idle, a.window)}
            if not a.no_load:
                results[n]["load"] = phase_load(root, n, a.load_seconds)
    finally:
        idle_cluster.stop()
    fit = growth(results) if len(results) >= 1 else {}
    print(f"growth: {1000 * fit['core_per_peer']:.3f} m-core per node per peer; heartbeats would take 0.1 core "
          f"per node at N = {fit['nodes_at_tenth_core_per_node']:.0f} (fit), "
          f"{fit['nodes_at_tenth_core_per_node_from_beat_cost']:.0f} (from the CPU per beat, "
          f"{1e6 * fit['core_s_per_beat']:.0f} us)", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"sizes": results, "growth": fit, "heartbeat_interval": HEARTBEAT,
                                 "failure_timeout": FAILURE_TIMEOUT, "cores": os.cpu_count(),
                                 "at": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    print(f"wrote {a.out}", flush=True)
    if a.plot:
        plot(results, fit, a.plot)
        print(f"wrote {a.plot}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except urllib.error.URLError as e:
        sys.exit(f"scale benchmark: a node stopped answering: {e}")
