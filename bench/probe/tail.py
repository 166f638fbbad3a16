"""What makes B's p99 several times its p50: per-hop timestamps of every round trip, with the GC pauses,
SQLite commits and event-loop stalls of every node process next to the slow ones.

    .venv/bin/python bench/probe/tail.py [--nodes 3] [-n 400] [--try freeze,checkpoint]

Runs workload B (sequential submit(noop).result() round trips) on a fresh grid whose node processes
load bench/probe/sitecustomize.py (JOBGRID_PROBE), then joins the client's timestamps with the nodes'
by job id (CLOCK_MONOTONIC is shared by all processes). Prints the median and p99 of each hop, the
hops of the slowest round trips, and what else happened in the nodes while they were in flight.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import workloads as wl  # noqa: E402
from jobgrid import examples  # noqa: E402

HOPS = [  # (label, event name, which timestamp: 0 start / 1 end, which node: "owner" or "replica")
    ("flush_submits starts (request decoded, on the owner)", "_flush_submits", 0),
    ("worker starts (pool.run)", "run", 0),
    ("submit replicated to both successors", "replicate:jobs", 1),
    ("worker done (pool.run returns)", "run", 1),
    ("flush_reports starts (result on the owner)", "_flush_reports", 0),
    ("result replicated to both successors", "replicate:results", 1),
    ("linger returns the result with the ack", "results_within", 1),
]


def nodes_events(nodes: dict[int, dict]) -> list:
    return [e for nd in nodes.values() for e in nd["events"]]


def load(folder: Path) -> dict[int, dict]:
    out = {}
    for f in folder.glob("probe-*.jsonl"):
        evs = [json.loads(x) for x in f.read_text().splitlines()]
        name = next((e[1][0] for e in evs if e[0] == "node"), f.stem)
        out[int(f.stem.split("-")[1])] = {"name": name, "events": evs}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3, choices=(1, 3))
    p.add_argument("-n", type=int, default=400)
    p.add_argument("--try", dest="tries", default="",
                   help="changes to try from outside the node: freeze (gc.freeze + higher threshold after start), "
                        "checkpoint (WAL checkpoints on a thread instead of inside COMMIT)")
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="jg-probe-"))
    env = {"JOBGRID_PROBE": str(folder), "PYTHONPATH": str(HERE), "JOBGRID_PROBE_TRY": a.tries}
    runners, replicas = (2, 1) if a.nodes == 1 else (1, 3)
    g = wl.Grid(a.nodes, runners, replicas, 170 + a.nodes, env=env)
    trips = []
    with g as (_, c):
        wl.warm(c)
        for i in range(50):
            c.submit(examples.noop, i).result(30)
        for i in range(a.n):
            t0 = time.monotonic()
            f = c.submit(examples.noop, i)
            assert f.result(30) == i
            trips.append((f.job_id, t0, time.monotonic()))
    time.sleep(0.5)
    nodes = load(folder)
    by_job: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    other = []  # (kind, node, start, end, extra)
    for pid, nd in nodes.items():
        for e in nd["events"]:
            kind, ids, t0, t1 = e[0], e[1], e[2], e[3]
            if kind in ("gc", "commit", "stall", "on_heartbeat"):
                other.append((kind, nd["name"], t0, t1, e[4:]))
                continue
            for i in ids or []:
                by_job[i][kind].append((nd["name"], t0, t1))
    rt = [(t1 - t0) * 1000 for _, t0, t1 in trips]
    # was the result in the ack (the node's linger caught it) or did the client need a wait request?
    lingered = {i for e in nodes_events(nodes) if e[0] == "results_within" and len(e) > 4 and e[4] for i in e[1] or []}
    with_ack = [(t1 - t0) * 1000 for jid, t0, t1 in trips if jid in lingered]
    waited = [(t1 - t0) * 1000 for jid, t0, t1 in trips if jid not in lingered]
    p50, p99 = statistics.median(rt), wl.pct(rt, 99)
    print(f"B on {a.nodes} node(s){' trying ' + a.tries if a.tries else ''}, {a.n} round trips: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(rt):.2f} ms "
          f"(probe files in {folder})")
    seg: dict[str, list[float]] = collections.defaultdict(list)
    rows = []
    for jid, t0, t1 in trips:
        evs = by_job.get(jid, {})
        marks = []
        for label, kind, which in HOPS:
            got = evs.get(kind)
            if got:
                marks.append((label, (min(x[1 + which] for x in got) - t0) * 1000))
        rows.append((jid, (t1 - t0) * 1000, marks))
        for label, ms in marks:
            seg[label].append(ms)
    print("\nms after the client's submit (median / p99 over round trips that have the hop):")
    for label, _, _ in HOPS:
        if seg[label]:
            print(f"  {label:55s} {statistics.median(seg[label]):7.2f} / {wl.pct(seg[label], 99):7.2f}  "
                  f"(n={len(seg[label])})")
    print(f"  {'answer in the client':55s} {p50:7.2f} / {p99:7.2f}")
    for label, xs in (("result came with the ack (linger)", with_ack), ("ack without the result: a wait request", waited)):
        if xs:
            print(f"  {label:55s} {statistics.median(xs):7.2f} / {wl.pct(xs, 99):7.2f}  (n={len(xs)})")
    slow = sorted(rows, key=lambda r: -r[1])[:max(4, len(rows) // 50)]
    print("\nslowest round trips, and what the nodes did meanwhile (gc: generation; stall: loop late by ms):")
    starts = {jid: t0 for jid, t0, _ in trips}
    for jid, total, marks in slow:
        t0 = starts[jid]
        t1 = t0 + total / 1000
        print(f"  {total:6.2f} ms: " + ", ".join(f"{lab.split(' (')[0]} {ms:.2f}" for lab, ms in marks))
        for kind, node, s, e, extra in sorted(other, key=lambda o: o[2]):
            if e >= t0 and s <= t1 and (kind != "commit" or (e - s) > 0.001) and kind != "on_heartbeat":
                print(f"      {kind:6s} {node:12s} at {(s - t0) * 1000:6.2f} ms for {(e - s) * 1000:5.2f} ms {extra or ''}")
        beats = [o for o in other if o[0] == "on_heartbeat" and o[3] >= t0 and o[2] <= t1]
        if beats:
            print(f"      {len(beats)} heartbeats handled meanwhile")
    lo, hi = trips[0][1], trips[-1][2]
    other = [o for o in other if o[3] >= lo and o[2] <= hi]  # the B run only, not the start-up
    gcs = [o for o in other if o[0] == "gc"]
    stalls = [o for o in other if o[0] == "stall"]
    commits = [(o[3] - o[2]) * 1000 for o in other if o[0] == "commit"]
    span = (trips[-1][2] - trips[0][1]) if trips else 1
    print(f"\nover the whole run ({span:.1f} s, all nodes): {len(gcs)} GC pauses "
          f"(gen2: {sum(1 for o in gcs if o[4] and o[4][0] == 2)}, longest {max(((o[3] - o[2]) * 1000 for o in gcs), default=0):.2f} ms); "
          f"{len(stalls)} loop stalls > 2 ms (longest {max(((o[3] - o[2]) * 1000 for o in stalls), default=0):.1f} ms); "
          f"{len(commits)} commits, median {statistics.median(commits) if commits else 0:.2f} ms, "
          f"p99 {wl.pct(commits, 99) if commits else 0:.2f} ms, {sum(1 for x in commits if x > 2)} over 2 ms "
          f"(longest {max(commits, default=0):.1f} ms)")
    in_slow = collections.Counter()
    for jid, total, _ in slow:
        t0 = starts[jid]
        t1 = t0 + total / 1000
        for kind, _, s, e, _ in other:
            if e >= t0 and s <= t1 and kind in ("gc", "stall"):
                in_slow[kind] += 1
    print(f"in the {len(slow)} slowest round trips: {in_slow.get('gc', 0)} GC pauses, {in_slow.get('stall', 0)} loop stalls")


if __name__ == "__main__":
    main()
