"""Profile the node processes under one workload with py-spy, and summarise where their CPU goes.

    .venv/bin/pip install py-spy          # not a dependency of jobgrid: a tool for this script
    .venv/bin/python bench/profile.py A   # or B, E; --nodes 1|3, --out DIR, --rate HZ, --native

Starts a fresh local grid (as bench/run.py does: 1 node with 2 runners, or 3 nodes R=3 with 1 runner
each), warms it, attaches `py-spy record --nonblocking -f raw` to every node process, runs the workload
once, stops py-spy (SIGINT: it writes its output) and prints, per node and for all nodes, the functions
with the largest self and inclusive shares of the samples, and the share of wall time each node was
busy (samples taken / (rate x seconds); py-spy drops idle samples). The raw collapsed stacks stay in
DIR (node<i>.txt) for flame graphs (e.g. speedscope, or inferno/flamegraph.pl).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as wl  # noqa: E402
from jobgrid import examples  # noqa: E402

import common as peers_common  # noqa: E402


def run_workload(name: str, g: wl.Grid, c, n: int) -> str:
    if name == "A":
        rate = wl.wl_a_map(c, n)
        return f"A map {n} jobs: {rate:.0f} jobs/s"
    if name == "A-submit":
        rate = wl.wl_a_submit(c, n)
        return f"A submit {n} jobs: {rate:.0f} jobs/s"
    if name == "B":
        p50, p99 = wl.wl_b(c, n)
        return f"B {n} round trips: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    if name == "E":
        e = peers_common.data_workload(lambda fn, *xs: c.submit(fn, *xs).result(300),
                                       lambda fn, xs: c.map(fn, xs, timeout=600))
        return f"E {e}"
    raise SystemExit(f"unknown workload {name!r} (A, A-submit, B, E)")


def frame_name(frame: str, line: bool = False) -> str:
    """'handler (aiohttp/web_protocol.py:123)' -> 'handler (aiohttp/web_protocol.py)' (':123' kept with `line`)."""
    fn, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where if line else where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3.11/", "services/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{fn} ({path})" if path else fn


# what a sample is charged to: the first of these met walking from the leaf frame up (path or function)
COMPONENTS = [
    ("SQLite (Store, raw SQL in controls)", ("jobgrid/node/store.py", "waiting_jobs (", "expire_results (jobgrid/node/c")),
    ("logging (structlog, json)", ("structlog/", "jobgrid/logs.py", "json/", "_log_jobs", "_log_reports")),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("WebSocket frames (aiohttp)", ("aiohttp/_websocket/", "aiohttp/client_ws.py", "aiohttp/web_ws.py")),
    ("msgpack and stream calls (codec, stream, peers)", ("jobgrid/codec.py", "jobgrid/framing.py",
                                                         "jobgrid/node/stream.py", "jobgrid/node/peers.py",
                                                         "jobgrid/node/http.py")),
    ("aiohttp (HTTP, middlewares)", ("aiohttp/",)),
    ("worker pipe (pool, asyncio streams)", ("jobgrid/node/pool.py", "jobgrid/worker.py", "asyncio/streams.py",
                                             "asyncio/subprocess.py")),
    ("job flow (jobs, grid, runner, batching)", ("jobgrid/",)),
    ("event loop (uvloop C code, asyncio)", ("asyncio/", "uvloop")),
]


def component(frames: list[str]) -> str:
    for f in reversed(frames):
        for name, marks in COMPONENTS:
            if any(m in f for m in marks):
                return name
    return "other"


def summarise(raw: Path, lines: collections.Counter | None = None, parts: collections.Counter | None = None
              ) -> tuple[int, collections.Counter, collections.Counter]:
    """(samples, self counts, inclusive counts) by function from py-spy's raw (collapsed) output; `lines`
    gets the self counts by source line, `parts` the counts by COMPONENTS."""
    total = 0
    self_c: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f and not f.startswith("thread (")
                  and not f.startswith("process ")]
        if not frames:
            continue
        total += k
        self_c[frames[-1]] += k
        if lines is not None:
            lines[frame_name(stack.split(";")[-1], line=True)] += k
        if parts is not None:
            parts[component(frames)] += k
        for f in set(frames):
            incl[f] += k
    return total, self_c, incl


def table(title: str, total: int, counts: collections.Counter, top: int) -> str:
    lines = [f"  {title}"]
    for name, k in counts.most_common(top):
        lines.append(f"    {100 * k / total:5.1f}%  {name}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", help="A (map), A-submit, B or E")
    p.add_argument("--nodes", type=int, default=3, choices=(1, 3))
    p.add_argument("-n", type=int, default=None, help="jobs (A: 5000) or round trips (B: 400)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too; slower)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default=None, help="folder for the raw py-spy outputs (default: a new temp dir)")
    a = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    n = a.n or {"A": 5000, "A-submit": 5000, "B": 400}.get(a.workload, 0)
    out = Path(a.out or tempfile.mkdtemp(prefix=f"jg-profile-{a.workload}-"))
    out.mkdir(parents=True, exist_ok=True)
    runners, replicas = (2, 1) if a.nodes == 1 else (1, 3)
    g = wl.Grid(a.nodes, runners, replicas, 160 + a.nodes)
    with g as (_, c):
        wl.warm(c)
        c.map(examples.noop, range(200), timeout=60)
        pids = sorted(g.pids())
        spies = []
        for i, pid in enumerate(pids):
            cmd = [spy, "record", "--nonblocking", "-f", "raw", "-r", str(a.rate), "-o", str(out / f"node{i + 1}.txt"),
                   "--pid", str(pid)] + (["--native"] if a.native else [])
            spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(1.0)  # py-spy attaches
        epoch0 = max(s.get("epoch", 0) for s in g.cl.states().values())
        t0 = time.perf_counter()
        what = run_workload(a.workload, g, c, n)
        seconds = time.perf_counter() - t0
        churn = max(s.get("epoch", 0) for s in g.cl.states().values()) - epoch0
        if churn:  # a node was declared dead (and rejoined): resync and promotion are in this profile too
            what += f"  [WARNING: {churn} ring change(s) during the workload]"
        for s in spies:
            s.send_signal(signal.SIGINT)
        for s in spies:
            try:
                s.wait(30)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait()
    print(f"{what}  ({seconds:.2f} s; raw stacks in {out})")
    all_self: collections.Counter = collections.Counter()
    all_incl: collections.Counter = collections.Counter()
    all_total = 0
    all_lines: collections.Counter = collections.Counter()
    all_parts: collections.Counter = collections.Counter()
    for i in range(len(pids)):
        raw = out / f"node{i + 1}.txt"
        if not raw.exists():
            print(f"node{i + 1}: no py-spy output")
            continue
        parts: collections.Counter = collections.Counter()
        total, self_c, incl = summarise(raw, all_lines, parts)
        all_parts.update(parts)
        all_total += total
        all_self.update(self_c)
        all_incl.update(incl)
        # py-spy adds 1 s of attach time before the workload: busy share over the recorded span
        busy = total / (a.rate * (seconds + 1.0))
        print(f"node{i + 1} (pid {pids[i]}): {total} samples, busy ~{100 * busy:.0f}% of the recorded time")
        print(table("by component", total, parts, 20))
        print(table("self", total, self_c, a.top))
        print(table("inclusive", total, incl, a.top))
    if all_total and len(pids) > 1:
        print(f"all nodes: {all_total} samples")
        print(table("by component", all_total, all_parts, 20))
        print(table("self", all_total, all_self, a.top))
        print(table("inclusive", all_total, all_incl, a.top))
    if all_total:
        print(table("self, by source line (all nodes)", all_total, all_lines, a.top))
    os.sync()


if __name__ == "__main__":
    main()
