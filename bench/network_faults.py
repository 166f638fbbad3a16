"""Network-fault figures for docs/harness.md, measured on a local 5-node grid whose links pass Toxiproxy.

    .venv/bin/python bench/network_faults.py [--out runs/network-faults] [--repeat 3]

1. Detection: seconds from the fault until every other node's server list has dropped the victim,
   for a SIGKILLed node and for a blackholed one (up, all its links hang), default timing.
2. Latency sweep: 0, 20, 50, 200 ms on every link (each way, clients' links too): one job's round trip
   (submit + result, p50/p99 of sequential jobs) and throughput (jobs/s of a batch); a plot.
3. Flapping link n1 <-> n2 (down/up every 1-2 s for 30 s): ring changes (epochs) it causes.
Writes results.json and latency.png in --out and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "services")]

import jobgrid  # noqa: E402
from jobgrid.examples import noop  # noqa: E402

from harness.backend import wait_for  # noqa: E402
from harness.faults import make  # noqa: E402
from harness.local import LocalCluster  # noqa: E402
from harness.nemesis import heal_cluster  # noqa: E402


def cluster(workdir: Path) -> LocalCluster:
    c = LocalCluster(workdir, replicas=3, runners=1, token="b" * 24, links="toxiproxy", exit_with_parent=True,
                     first_octet=256 * 91 + 10)
    c.up(5, timeout=120)
    return c


def _dropped(c: LocalCluster, victim) -> bool:
    others = [n for n in c.nodes if n is not victim and n.state == "running"]
    lists = c.server_lists(others)
    return len(lists) == len(others) and all(
        all((s["ip"], s["port"]) != (victim.host, victim.port) for s in sl["servers"]) for sl in lists.values())


def detection(c: LocalCluster, kind: str, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        victim = c.nodes[2]
        fault = make(kind, c, nodes=[victim.name])
        t0 = time.monotonic()
        fault.apply()
        wait_for(lambda: _dropped(c, victim), 60, f"{victim.name} dropped", step=0.02)
        out.append(time.monotonic() - t0)
        fault.heal()
        heal_cluster(c)
        c.wait_converged(120)
    return out


def sweep(c: LocalCluster, ms: int, jobs: int = 60, batch: int = 400) -> dict:
    faults = []
    if ms:
        for n in c.nodes:  # each node's outgoing data (its links' upstream or downstream), and the clients'
            for f in (make("latency", c, nodes=[n.name], ms=ms, direction="out"),
                      make("latency", c, between=("client", n.name), ms=ms, direction="out")):
                f.apply()
                faults.append(f)
    try:
        with jobgrid.Client(c.client_urls(), token=c.token, timeout=60) as g:
            g.submit(noop, 0).result()
            rts = []
            for i in range(jobs):
                t = time.monotonic()
                g.submit(noop, i).result(timeout=60)
                rts.append(time.monotonic() - t)
            t = time.monotonic()
            futs = [g.submit(noop, i) for i in range(batch)]
            for f in futs:
                f.result(timeout=120)
            thr = batch / (time.monotonic() - t)
    finally:
        for f in faults:
            f.heal()
    rts.sort()
    return {"ms": ms, "p50": rts[len(rts) // 2] * 1000, "p99": rts[min(len(rts) - 1, int(len(rts) * 0.99))] * 1000,
            "throughput": thr}


def flapping(c: LocalCluster, seconds: float = 30.0) -> dict:
    epoch0 = max(st["epoch"] for st in c.states().values())
    f = make("flap", c, between=("n1", "n2"), period=2.0)
    f.apply()
    time.sleep(seconds)
    f.heal()
    c.wait_converged(120)
    return {"flips": f.record["flips"], "ring_changes": max(st["epoch"] for st in c.states().values()) - epoch0}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["ms"] for r in rows]
    a1.plot(xs, [r["p50"] for r in rows], "o-", label="p50")
    a1.plot(xs, [r["p99"] for r in rows], "s--", label="p99")
    a1.set_xlabel("latency on every link, each way (ms)")
    a1.set_ylabel("one job's round trip (ms)")
    a1.legend()
    a2.plot(xs, [r["throughput"] for r in rows], "o-", color="tab:green")
    a2.set_xlabel("latency on every link, each way (ms)")
    a2.set_ylabel("jobs/s (batch of 400 no-op jobs)")
    fig.suptitle("5 nodes, R=3, every link through Toxiproxy")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/network-faults", help="output folder (default runs/network-faults)")
    ap.add_argument("--repeat", type=int, default=3, help="detections measured per fault kind (default 3)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp, cluster(Path(tmp)) as c:
        res["detect_kill"] = detection(c, "kill", a.repeat)
        res["detect_blackhole"] = detection(c, "blackhole", a.repeat)
        print("detection (s): kill", [round(x, 2) for x in res["detect_kill"]], "blackhole",
              [round(x, 2) for x in res["detect_blackhole"]], flush=True)
        res["sweep"] = [sweep(c, ms) for ms in (0, 20, 50, 200)]
        for r in res["sweep"]:
            print(f"{r['ms']:>4} ms: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, {r['throughput']:.0f} jobs/s",
                  flush=True)
        res["flapping"] = flapping(c)
        print("flapping:", res["flapping"])
    res["medians"] = {k: statistics.median(res[k]) for k in ("detect_kill", "detect_blackhole")}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    plot(res["sweep"], out / "latency.png")
    print(f"written {out / 'results.json'} and {out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
