"""The random-fault soak: faults mixed at random for a while, two clients submitting all along, then checks.

While the nemesis (harness/nemesis.py) applies one random fault of the given kinds at a time (never
more than R-1 nodes down, a majority always up, except `restart-all`), two clients submit continuously
jobs with known ids whose only work is to count their own run in a SQLite file outside the grid
(harness/sidefx.py). Then everything is healed and drained, and the soak checks:

* the history (harness/history.py): every acknowledged job has a result, none twice;
* every node answers the same result record for every acknowledged job;
* no future raised an error for a job that in fact ran (the user would have been told a lie);
* how many jobs ran more than once, each re-run charged to the fault in force (or last) when it began;
* p99 and max submit latency in each fault window and outside them.

`harness run --faults ...` runs it (harness/run.py); `run_soak` is the same code for tests.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from jobgrid.client import build_spec

from . import sidefx
from .errors import HarnessError
from .history import CheckResult, HistoryRecorder
from .nemesis import Nemesis
from .workload import judge, run_workload


@dataclass
class SoakResult:
    seed: int
    verdict: CheckResult
    windows: list[dict]
    acknowledged: int
    raised_then_ran: list[str]
    mismatched: dict[str, str]              # job id -> what differed between the nodes' answers
    reruns: dict[str, int]                  # job id -> runs beyond the first
    reruns_by_fault: dict[str, int]         # fault window ("#3 kill2 n2,n4") -> jobs it made run again
    latency: list[dict]                     # per window: {window, submits, p99_ms, max_ms}
    timing: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.verdict.valid and not self.mismatched and not self.raised_then_ran

    def lines(self) -> list[str]:
        """The verdict lines of the soak."""
        v = self.verdict
        out = [f"{'VALID' if self.valid else 'INVALID'}: {self.acknowledged} acknowledged, {len(v.ok)} with a result, "
               f"{v.lost_count} lost, {v.duplicated_count} duplicated, {len(self.mismatched)} with differing "
               f"records across nodes, {len(self.raised_then_ran)} futures raised for jobs that ran (seed {self.seed})",
               f"jobs run more than once: {len(self.reruns)} ({sum(self.reruns.values())} extra runs)"]
        out += [f"  {w}: {n}" for w, n in self.reruns_by_fault.items()]
        out.append("submit latency per fault window (p99 / max):")
        out += [f"  {r['window']}: {r['submits']} submits, {r['p99_ms']:.0f} / {r['max_ms']:.0f} ms" for r in self.latency]
        return out


def window_name(i: int, w: dict) -> str:
    return f"#{i + 1} {w['kind']} {','.join(w.get('nodes') or [])}".rstrip()


def _window_at(windows: list[dict], t: float) -> int | None:
    """Index of the window in force at monotonic time t, else the last one that began before t."""
    best = None
    for i, w in enumerate(windows):
        if w["start"] <= t:
            best = i
    return best


def latency_per_window(latencies: list[tuple[float, float]], windows: list[dict]) -> list[dict]:
    groups: dict[str, list[float]] = {}
    for t, d in latencies:
        idx = next((i for i, w in enumerate(windows) if w["start"] <= t <= (w["end"] or t)), None)
        groups.setdefault("no fault" if idx is None else window_name(idx, windows[idx]), []).append(d)
    out = []
    for name, ds in groups.items():
        ds.sort()
        out.append({"window": name, "submits": len(ds), "p99_ms": ds[min(len(ds) - 1, int(len(ds) * 0.99))] * 1000,
                    "max_ms": ds[-1] * 1000})
    return sorted(out, key=lambda r: _order(r["window"]))


def _order(name: str) -> int:
    """`#12 kill n2` -> 12 (windows in the order they came); anything else first."""
    return int(name[1:].split()[0]) if name.startswith("#") else 0


async def _records(urls: list[str], token: str | None, ids: list[str], concurrency: int = 16) -> dict[str, dict]:
    """job id -> {node url: the result record it answers (or an error string)}."""
    out: dict[str, dict] = {jid: {} for jid in ids}
    sem = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as s:
        async def one(url: str, jid: str) -> None:
            async with sem:
                for attempt in range(5):
                    try:
                        async with s.get(f"{url}/jobs/{jid}/result") as r:
                            if r.status == 200:
                                rec = await r.json()
                                rec.pop("expires_at", None)
                                out[jid][url] = rec
                                return
                            out[jid][url] = f"{r.status}: {(await r.text())[:120]}"
                    except (aiohttp.ClientError, TimeoutError, OSError) as e:
                        out[jid][url] = f"{type(e).__name__}"
                    await asyncio.sleep(0.5 * (attempt + 1))
        await asyncio.gather(*(one(u, j) for j in ids for u in urls))
    return out


def compare_records(urls: list[str], token: str | None, ids: list[str]) -> dict[str, str]:
    """Ask every node for every job's result; job id -> what was wrong, for those not answered alike."""
    bad = {}
    for jid, answers in asyncio.run(_records(urls, token, ids)).items():
        recs = list(answers.values())
        errors = [f"{u}: {a}" for u, a in answers.items() if not isinstance(a, dict)]
        if errors:
            bad[jid] = "; ".join(errors)[:300]
        elif any(r != recs[0] for r in recs[1:]):
            keys = sorted({k for r in recs for k in r if any(r.get(k) != o.get(k) for o in recs)})
            bad[jid] = "nodes answered different " + ", ".join(
                f"{k}: {sorted({str(r.get(k)) for r in recs})}" for k in keys)[:400]
    return bad


def run_soak(cluster: Any, faults: list[str], *, duration: float, seed: int, rate: float = 30.0, drain: float = 180.0,
             hold: tuple[float, float] = (4.0, 8.0), gap: tuple[float, float] = (2.0, 5.0),
             job_seconds: float = 0.05, recorder: HistoryRecorder | None = None,
             log: Callable[[str], None] = print) -> SoakResult:
    """The soak on a cluster that is up (see the module's docstring). `rate`: submissions per second, both
    clients together."""
    # the run counter is a SQLite file the job processes share: in the local cluster's folder, or on the
    # volume every docker node mounts on /shared (read here through its folder on this host)
    if cluster.backend == "local":
        db = here = str(Path(cluster.workdir).resolve() / "soak-runs.sqlite")
    else:
        db, here = "/shared/soak-runs.sqlite", str(Path(cluster.shared_dir()) / "soak-runs.sqlite")
    sidefx.create(here)
    os.chmod(here, 0o666)
    rec = recorder or HistoryRecorder()
    stop = threading.Event()
    result: dict = {}
    prefix = f"soak{seed}-"

    def spec_for(i: int) -> tuple[Any, Any]:
        jid = f"{prefix}{i:07d}"
        return build_spec("call", job_id=jid, target="harness.sidefx:record", args=[db, jid, job_seconds],
                          name="soak"), jid

    def work() -> None:
        try:
            result["timing"] = run_workload(cluster.client_urls(), cluster.token, rec, jobs=10**9, rate=rate,
                                            drain_timeout=drain, seed=seed, stop_submitting=stop,
                                            spec_for=spec_for, clients=2)
        except BaseException as e:  # noqa: BLE001
            result["error"] = e

    nem = Nemesis(cluster, names=faults, duration=duration, seed=seed, hold=hold, gap=gap, log=log)
    th = threading.Thread(target=work, name="soak-clients", daemon=True)
    th.start()
    nem.start()
    try:
        time.sleep(duration)
    finally:
        stop.set()
        nem.stop_and_heal()
    log("soak: faults over, all healed; draining")
    cluster.wait_converged(120)
    th.join(drain + 300)
    if th.is_alive():
        raise HarnessError("the soak's clients did not finish draining")
    if "error" in result:
        raise HarnessError(f"soak workload failed: {result['error']}")
    if nem.error is not None:
        raise HarnessError(f"nemesis failed: {nem.error}")
    timing = result["timing"]
    verdict = judge(rec.ops)
    acked = sorted(verdict.acknowledged)
    mismatched = compare_records(cluster.client_urls(), cluster.token, acked)
    wall0 = time.time() - time.monotonic()  # monotonic -> wall clock, for the side-effect rows
    reruns, by_fault = {}, {}
    for jid, starts in sidefx.runs(here, acked).items():
        if len(starts) > 1:
            reruns[jid] = len(starts) - 1
            idx = _window_at(nem.windows, starts[1] - wall0)
            name = "before any fault" if idx is None else window_name(idx, nem.windows[idx])
            by_fault[name] = by_fault.get(name, 0) + 1
    windows = [{**w, "name": window_name(i, w)} for i, w in enumerate(nem.windows)]
    by_fault = dict(sorted(by_fault.items(), key=lambda kv: _order(kv[0])))
    return SoakResult(seed, verdict, windows, len(acked), timing.get("raised_then_ran", []), mismatched, reruns,
                      by_fault, latency_per_window(timing["latencies"], nem.windows), timing)
