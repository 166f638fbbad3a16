"""jobgrid benchmark: workloads A-E on 1 and 3 local nodes, judged by ratios to ProcessPoolExecutor(2) and
(with --peers) Celery+Redis, Dask and RQ measured in the same run; a scaling table with CPU per job, and a
queue-depth check (100,000 queued jobs).

    .venv/bin/python bench/run.py [--quick] [--peers --peers-python PY] [--skip scaling,depth,...]
    make bench PEERS=1          # installs redis-server and .venv-peers, then runs everything

Nodes are real processes on loopback (harness.local.LocalCluster). Runners: 2 per node on 1 node
(= the 2 cores); 1 per node on 3 and 5 nodes (3-5 worker processes on 2 cores: enough to keep both
cores busy while the node event loops take their share; more would only add contention).
Targets and tables: bench/report.py. Results go to bench/results/<timestamp>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as wl  # noqa: E402  (puts the repository and bench/peers on sys.path)
from jobgrid import examples  # noqa: E402
from procstat import load_average  # noqa: E402
from report import ONE, THREE, chart, peers_from_medians, print_report  # noqa: E402

import common as peers_common  # noqa: E402


def run_grid(label: str, nodes: int, runners: int, replicas: int, octet: int, q: dict, out: dict) -> None:
    print(f"== {label}: {nodes} node(s), runners={runners}/node, R={replicas}", flush=True)
    g = wl.Grid(nodes, runners, replicas, octet)
    with g as (cl, c):
        wl.warm(c)
        r: dict = {}
        r["A_submit"], *r["A_submit_cpu"] = wl.measured(g, q["A"], wl.wl_a_submit, c, q["A"])
        print(f"  A submit {r['A_submit']:.0f} jobs/s, CPU ms/job node {r['A_submit_cpu'][0]:.2f} + workers "
              f"{r['A_submit_cpu'][1]:.2f}", flush=True)
        r["A_map"], *r["A_map_cpu"] = wl.measured(g, q["A"], wl.wl_a_map, c, q["A"])
        print(f"  A map    {r['A_map']:.0f} jobs/s, CPU ms/job node {r['A_map_cpu'][0]:.2f} + workers "
              f"{r['A_map_cpu'][1]:.2f}", flush=True)
        r["B_p50"], r["B_p99"] = wl.wl_b(c, q["B"]); print(f"  B {r['B_p50']:.2f}/{r['B_p99']:.2f} ms", flush=True)
        r["C_wall"] = wl.wl_c(c, q["C"]); print(f"  C {r['C_wall']:.2f} s", flush=True)
        r["D"] = wl.wl_d(c, cl, q["D"]); print(f"  D {r['D']}", flush=True)
    out[label] = r


def run_e(out: dict) -> None:
    """E on its own fresh 3-node grid (R=3, 1 runner per node, as the 3-node column), so the RSS figures
    are those of the data workload alone."""
    print("== E (data): 3 nodes, runners=1/node, R=3", flush=True)
    g = wl.Grid(3, 1, 3, 90)
    with g as (_, c):
        wl.warm(c)
        e = wl.wl_e(g, c)
    print(f"  E {e}", flush=True)
    out.setdefault(THREE, {}).update(e)


def run_ppe(q: dict, out: dict, data: bool) -> None:
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
        r["B_p50"], r["B_p99"] = statistics.median(lat), wl.pct(lat, 99)
        t0 = time.perf_counter()
        list(ex.map(examples.busy, [100] * q["C"], chunksize=1))
        r["C_wall"] = time.perf_counter() - t0
        if data:  # for scale only (no target): the same bytes through two pipes, nothing stored
            r.update(peers_common.data_workload(lambda fn, *xs: ex.submit(fn, *xs).result(),
                                                lambda fn, xs: list(ex.map(fn, xs))))
    print(f"  {r}", flush=True)
    out["ppe"] = r


def run_scaling(q: dict, out: dict) -> None:
    rows = []
    for i, nodes in enumerate((1, 3, 5)):
        runners = 2 if nodes == 1 else 1
        g = wl.Grid(nodes, runners, min(3, nodes), 100 + i * 10)
        with g as (_, c):
            wl.warm(c)
            rate, node_ms, worker_ms = wl.measured(g, q["A"], wl.wl_a_map, c, q["A"])
        rows.append({"nodes": nodes, "runners": runners, "jobs_per_s": rate, "node_cpu_ms": node_ms,
                     "worker_cpu_ms": worker_ms, "cpu_ms_per_job": node_ms + worker_ms})
        print(f"  scaling {rows[-1]}", flush=True)
    out["scaling"] = rows


def run_depth(q: dict, out: dict) -> None:
    print(f"== queue depth ({q['depth']} queued jobs, --runners 0)", flush=True)
    out["depth"] = wl.depth(q["depth"])


def run_peers(python: str, out: dict, reps: int, plan: str) -> None:
    """Celery+Redis, RQ+Redis and Dask through bench/peers/run_all.py (which starts and stops its own Redis)."""
    print(f"== peers: Celery+Redis, RQ+Redis, Dask ({python})", flush=True)
    if not Path(python).exists():
        raise SystemExit(f"{python} not found: run `bash scripts/ensure-peers.sh` (or `make bench PEERS=1`) first")
    work = Path(python).absolute().parent.parent / "work"  # not resolve(): the venv python is a symlink
    env = dict(os.environ, PEERS_WORK=str(work))
    r = subprocess.run([python, str(HERE / "peers" / "run_all.py"), "--reps", str(reps), "--only", plan],
                       capture_output=True, text=True, env=env)
    lines = r.stdout.strip().splitlines()
    try:
        med = json.loads(lines[-1])
    except (ValueError, IndexError):
        print(r.stdout[-3000:], r.stderr[-3000:], flush=True)
        raise SystemExit(f"the peers' run failed (exit {r.returncode}); see above") from None
    failed = [json.loads(x).get("label") for x in lines if x.startswith("{") and '"error"' in x]
    if failed:
        print(f"  peer runs that failed: {failed}\n{r.stderr[-2000:]}", flush=True)
    out["peers_medians"] = med
    out["peers"] = peers_from_medians(med)
    for s, figs in out["peers"].items():
        print(f"  {s}: {figs}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    p.add_argument("--peers", action="store_true", help="also run Celery+Redis, RQ and Dask (see --peers-python)")
    p.add_argument("--peers-python", default=".venv-peers/bin/python",
                   help="a Python with celery, rq and dask installed (scripts/ensure-peers.sh makes one)")
    p.add_argument("--peer-reps", type=int, default=1, help="repetitions of each peer run (medians)")
    p.add_argument("--peer-plan", default="celery,rq,dask",
                   help="which peer runs (label prefixes of bench/peers/run_all.py), e.g. 'dask E'")
    p.add_argument("--skip", default="", help="comma list of: ppe,1,3,E,scaling,depth")
    a = p.parse_args()
    q = ({"A": 1000, "B": 100, "C": 20, "D": 20, "depth": 20_000} if a.quick else
         {"A": 5000, "B": 200, "C": 40, "D": 20, "depth": 100_000})
    skip = set(filter(None, a.skip.split(",")))
    res: dict = {"quick": a.quick, "counts": q, "cpus": os.cpu_count(), "load": {"before": load_average()}}
    print(f"load average {res['load']['before']}", flush=True)
    if "ppe" not in skip:
        run_ppe(q, res, data="E" not in skip)
    if "1" not in skip:
        run_grid(ONE, 1, 2, 1, 60, q, res)
    if "3" not in skip:
        run_grid(THREE, 3, 1, 3, 70, q, res)
    if "E" not in skip:
        run_e(res)
    if a.peers:
        run_peers(a.peers_python, res, a.peer_reps, a.peer_plan)
    if "scaling" not in skip:
        run_scaling(q, res)
    if "depth" not in skip:
        run_depth(q, res)
    res["load"]["after"] = load_average()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = HERE / "results"
    outdir.mkdir(exist_ok=True)
    (outdir / f"{stamp}.json").write_text(json.dumps(res, indent=2, default=str))
    chart(res, outdir / f"{stamp}.png")
    print_report(res, stamp)
    print(f"wrote {outdir / stamp}.json and .png")


if __name__ == "__main__":
    main()
