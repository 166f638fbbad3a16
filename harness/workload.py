"""Workloads, drain and the run report (history, verdict, plots).

Used by `harness submit`, `harness run` and the harness tests. Every client op is recorded in a
harness.history.HistoryRecorder and the run is judged by harness.history.check.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jobgrid import examples
from jobgrid.client import AsyncClient, build_spec, pickle_spec, script_spec
from jobgrid.errors import JobCancelled, JobFailed, JobgridError, RemoteError
from harness.history import HistoryRecorder, check

from .errors import HarnessError

KINDS = ("noop", "sleep", "cpu", "fail", "script", "call", "big", "mix")
BIG_ARG = 256 * 1024  # bytes of argument a "big" job carries


def make_spec(kind: str, i: int, rng: random.Random):
    """A job of `kind` (mix: all three job kinds in turn) and the value a correct run returns."""
    if kind == "mix":
        kind = ("noop", "sleep", "call", "cpu", "script")[i % 5]
    if kind == "noop":
        return pickle_spec(examples.noop, (i,), {}), i
    if kind == "sleep":
        return pickle_spec(examples.sleep, (round(rng.uniform(0.05, 0.3), 3), i), {}), i
    if kind == "cpu":
        return pickle_spec(examples.busy, (rng.randint(5, 30),), {}), None
    if kind == "fail":
        return pickle_spec(examples.fail, (f"job {i} fails on purpose",), {}), {"error": "ValueError"}
    if kind == "script":
        return script_spec(f"print({i} * 2)\n", name="harness-script"), {"stdout": str(i * 2), "exit": 0}
    if kind == "big":  # 256 KB of argument, a small result: the bytes go to the owner and every replica
        return pickle_spec(len, (bytes([i % 256]) * BIG_ARG,), {}, name="big"), BIG_ARG
    if kind == "call":
        return build_spec("call", target="jobgrid.examples:add", args=[i, i], name="add"), 2 * i
    raise HarnessError(f"unknown job kind {kind!r}; choose one of {', '.join(KINDS)}")


def _value(fut: asyncio.Future) -> Any:
    exc = fut.exception()
    if exc is not None:
        return {"error": type(exc).__name__}
    v = fut.result()
    if hasattr(v, "stdout"):
        return {"stdout": v.stdout.strip(), "exit": v.exit_code}
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


async def workload(addresses: Sequence[str], token: str | None, recorder: HistoryRecorder, *, jobs: int,
                   kind: str = "noop", rate: float | None = None, drain_timeout: float = 120.0,
                   on_progress: Callable[[int, int], None] | None = None, seed: int = 1,
                   stop_submitting: threading.Event | None = None,
                   spec_for: Callable[[int], tuple[Any, Any]] | None = None, clients: int | None = None,
                   timeout: float = 30.0) -> dict:
    """Submit `jobs` jobs (at `rate` per second when given), then wait for results up to drain_timeout.

    `spec_for(i)` makes job i (spec, expected value) instead of `kind`; `clients` is how many clients
    submit in turn (default one per address, each trying its own address first); `stop_submitting` ends
    the submissions early (a run of a fixed duration); `timeout` is each client call's own timeout
    (a submission that takes longer is recorded as of unknown outcome).

    Records invoke/ok/info for each submit and a read (delivery) for each result that arrives.
    Returns timing data: submit latencies and completion times (monotonic).
    """
    rng = random.Random(seed)
    acked: dict[str, asyncio.Future] = {}
    unknown: list[str] = []
    latencies: list[tuple[float, float]] = []
    completions: list[float] = []
    done = 0
    proc = "c1"
    no_result: dict[str, str] = {}   # acknowledged jobs whose future ended without a result, and why
    expected: dict[str, Any] = {}     # job id -> the value a correct run returns (None: not checked)
    wrong: dict[str, Any] = {}        # job id -> the value that came back instead
    ran_on: dict[str, int] = {}       # node id -> jobs whose recorded result it ran
    kinds: dict[str, int] = {}
    procs: dict[str, str] = {}        # job id -> the client (history process) that submitted it

    def seen(res: Any) -> None:
        ran_on[res.node] = ran_on.get(res.node, 0) + 1

    addrs = list(addresses)
    # one client per node, each trying its own node first: jobs are owned by the node that takes them,
    # so this spreads the queues over the whole grid (every client fails over to the others)
    n_clients = clients or len(addrs)
    clients_ = [AsyncClient(addrs[k % len(addrs):] + addrs[:k % len(addrs)], token=token, timeout=timeout,
                            on_result=seen) for k in range(n_clients)]
    client = clients_[0]
    try:

        def on_done(jid: str, fut: asyncio.Future) -> None:
            nonlocal done
            if fut.cancelled():
                return
            exc = fut.exception()
            if isinstance(exc, JobgridError) and not isinstance(exc, (JobFailed, RemoteError, JobCancelled)):
                no_result[jid] = type(exc).__name__
                return  # no result reached us (unknown job, grid unavailable): not a completion
            value = _value(fut)
            recorder.ok(procs.get(jid, proc), "read", jid, value=value, delivery=True)
            if expected.get(jid) is not None and value != expected[jid]:
                wrong[jid] = value
            completions.append(time.monotonic())
            done += 1
            if on_progress:
                on_progress(len(acked), done)

        async def one(i: int) -> None:
            spec, want = spec_for(i) if spec_for else make_spec(kind, i, rng)
            expected[spec.id] = want
            kinds[spec.kind] = kinds.get(spec.kind, 0) + 1
            me = procs[spec.id] = f"c{i % n_clients + 1}"
            recorder.invoke(me, "submit", spec.id)
            t0 = time.monotonic()
            try:
                fut = await clients_[i % n_clients].submit_spec(spec)
            except Exception as e:  # noqa: BLE001 - outcome unknown (timeouts, failover exhausted)
                recorder.info(me, "submit", spec.id, error=str(e)[:200])
                unknown.append(spec.id)
                return
            latencies.append((t0, time.monotonic() - t0))
            recorder.ok(me, "submit", spec.id)
            acked[spec.id] = fut
            fut.add_done_callback(lambda f, jid=spec.id: on_done(jid, f))
            if on_progress:
                on_progress(len(acked), done)

        tasks = []
        start = time.monotonic()
        for i in range(jobs):
            if stop_submitting is not None and stop_submitting.is_set():
                break
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
            if not rate and len(tasks) % 200 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        # drain: every acknowledged job gets a result or the deadline passes
        end = time.monotonic() + drain_timeout
        pending = [f for f in acked.values() if not f.done()]
        while pending and time.monotonic() < end:
            await asyncio.wait(pending, timeout=min(1.0, max(0.05, end - time.monotonic())))
            pending = [f for f in acked.values() if not f.done()]
        # final read (as Jepsen does): acknowledged jobs whose future never resolved, asked afresh of the
        # whole grid through a new client; counted separately so the report shows how many needed it
        still = [jid for jid, f in acked.items() if not f.done() or jid in no_result]
        final_reads = 0
        raised_then_ran: list[str] = []   # a future raised, yet the grid has the job's result: the user was misled
        if still:
            async with AsyncClient(addrs, token=token, timeout=10.0) as fresh:
                for jid in still:
                    try:
                        res = await fresh.wait_result(jid, timeout=3.0)
                    except Exception:  # noqa: BLE001 - no result anywhere: the checker calls it lost
                        continue
                    if res is not None:
                        recorder.ok(proc, "read", jid, value=res.state, delivery=False, final=True)
                        final_reads += 1
                        done += 1
                        if jid in no_result:
                            raised_then_ran.append(jid)
                        if on_progress:
                            on_progress(len(acked), done)
        # outcomes unknown at submit time: did the grid run them anyway?
        for jid in unknown:
            try:
                res = await client.wait_result(jid, timeout=2.0)
                recorder.ok(proc, "read", jid, value=None if res is None else res.state, delivery=False)
            except Exception:  # noqa: BLE001 - never ran: fine for an unacknowledged job
                pass
    finally:
        for c in clients_:
            await c.close()
    return {"latencies": latencies, "completions": completions, "acked": len(acked), "unknown": len(unknown),
            "final_reads": final_reads, "no_result": dict(list(no_result.items())[:50]),
            "pending": sum(1 for f in acked.values() if not f.done()),
            "ran_on": ran_on, "kinds": kinds, "wrong": dict(list(wrong.items())[:50]), "wrong_count": len(wrong),
            "checked": sum(1 for j, f in acked.items() if f.done() and expected.get(j) is not None
                           and j not in no_result),
            "unchecked": _unchecked(acked, expected, no_result, kinds),
            "raised_then_ran": raised_then_ran}


def _unchecked(acked: dict, expected: dict, no_result: dict, kinds: dict) -> dict[str, int]:
    """How many acknowledged jobs were not compared with an expected value, by reason."""
    out: dict[str, int] = {}
    for jid, fut in acked.items():
        if expected.get(jid) is None:
            reason = "cpu jobs: their value is the CPU time they measured, not a fixed number"
        elif not fut.done() or jid in no_result:
            reason = "no result reached the client's future: read afterwards and judged by the checker only"
        else:
            continue
        out[reason] = out.get(reason, 0) + 1
    return out


def run_workload(addresses: Sequence[str], token: str | None, recorder: HistoryRecorder, **kw: Any) -> dict:
    return asyncio.run(workload(addresses, token, recorder, **kw))


# ---- report ---------------------------------------------------------------------------------------------
def remember_ids(cluster: Any) -> None:
    """Node ids change when a node restarts: keep the old ones so promotions name the right node."""
    past = cluster.__dict__.setdefault("past_ids", {})
    for n in cluster.nodes:
        if n.node_id:
            past[n.node_id] = n.name


def _name(names: dict[str, str], node_id: Any) -> str:
    """A node's name from any of its ids (a node that rejoins after removal is `<id>-<n>`)."""
    nid = str(node_id)
    while nid not in names and "-" in nid:
        nid = nid.rsplit("-", 1)[0]
    return names.get(nid, str(node_id))


def promotions(cluster: Any) -> list[dict]:
    """Every promotion of backup replicas the live nodes report, with node names."""
    states = cluster.states()
    names = {**getattr(cluster, "past_ids", {}), **{n.node_id: n.name for n in cluster.nodes if n.node_id}}
    seen = set()
    out = []
    for st in states.values():
        for p in st.get("promotions", []):
            key = (p.get("dead"), p.get("by"), p.get("epoch"))
            if key in seen:
                continue
            seen.add(key)
            out.append({**p, "dead_name": _name(names, p.get("dead")), "by_name": _name(names, p.get("by"))})
    return out


def ran_by_node(cluster: Any, ran_on: dict[str, int]) -> dict[str, int]:
    """Jobs per node name that ran them (a node's incarnations counted together)."""
    names = {**getattr(cluster, "past_ids", {}), **{n.node_id: n.name for n in cluster.nodes if n.node_id}}
    out: dict[str, int] = {}
    for nid, count in ran_on.items():
        name = _name(names, nid)
        out[name] = out.get(name, 0) + count
    return dict(sorted(out.items()))


def plots(outdir: Path, t0: float, timing: dict, windows: list[dict]) -> list[Path]:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    def shade(ax) -> None:
        colours = {"kill": "tab:red", "kill2": "tab:red", "restart": "tab:pink", "restart-all": "black",
                   "partition": "tab:orange", "partition-toxiproxy": "tab:orange", "pause": "tab:purple",
                   "latency": "tab:green", "bandwidth": "tab:olive", "blackhole": "tab:brown",
                   "reset": "tab:cyan", "slow-close": "tab:gray", "flap": "tab:olive"}
        for w in windows:
            if w.get("start") is None:
                continue
            ax.axvspan(w["start"] - t0, (w.get("end") or w["start"]) - t0, alpha=0.2,
                       color=colours.get(w["kind"], "grey"), label=w["kind"])
        handles, labels = ax.get_legend_handles_labels()
        if labels:
            uniq = dict(zip(labels, handles))
            ax.legend(uniq.values(), uniq.keys(), loc="upper right")

    files = []
    comps = [c - t0 for c in timing.get("completions", [])]
    fig, ax = plt.subplots(figsize=(9, 4))
    if comps:
        secs = int(max(comps)) + 1
        counts = [0] * secs
        for c in comps:
            counts[max(0, int(c))] += 1
        ax.bar(range(secs), counts, width=1.0, align="edge", color="tab:blue")
    shade(ax)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("jobs completed per second")
    ax.set_title("throughput, fault windows shaded")
    f = outdir / "throughput.png"
    fig.tight_layout()
    fig.savefig(f, dpi=90)
    plt.close(fig)
    files.append(f)

    fig, ax = plt.subplots(figsize=(9, 4))
    lat = timing.get("latencies", [])
    if lat:
        ax.scatter([t - t0 for t, _ in lat], [d * 1000 for _, d in lat], s=4, color="tab:blue")
    shade(ax)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("submit latency (ms)")
    ax.set_title("submit latency, fault windows shaded")
    f = outdir / "latency.png"
    fig.tight_layout()
    fig.savefig(f, dpi=90)
    plt.close(fig)
    files.append(f)
    return files


def judge(ops: list[dict]) -> Any:
    return check(ops)
