"""`harness run`: up, a recorded workload under a nemesis, heal, drain, final reads, check, down.

Two kinds of run: a *plan* (`--kill 2 --partition halves`: a fixed number of jobs, each fault its slot)
and a *soak* (`--faults kill,pause,...`: faults at random for --duration while two clients submit all
along, harness/soak.py). The procedure and its report live here; harness/cli.py only parses options.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .cluster import make_cluster, node_table, pick_backend, pick_links, progress_bar
from .errors import HarnessError
from .faults import make, parse_names
from .faults_net import partition_class
from .history import HistoryRecorder, load_history, summary_line
from .nemesis import Nemesis
from .soak import latency_per_window, run_soak
from .workload import judge, plots, promotions, ran_by_node, remember_ids, run_workload


@dataclass
class RunConfig:
    nodes: int = 5
    replicas: int = 3
    runners: int = 2
    jobs: int = 2000
    kind: str = "mix"
    kill: int = 0
    pause: int = 0
    partition: str | None = None
    via: str = "iptables"
    faults: str | None = None        # a random mix of these kinds (comma-separated registry names)
    seed: int | None = None
    duration: float = 60.0
    drain: float = 60.0
    failure_timeout: float = 2.0
    backend: str | None = None
    links: str | None = None
    runs_dir: str = "runs"
    rate: float = 30.0               # soak: submissions per second, both clients together
    fault_params: dict[str, dict] = field(default_factory=dict)


def _outdir(runs_dir: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out, k = Path(runs_dir) / stamp, 1
    while out.exists():
        out, k = Path(runs_dir) / f"{stamp}-{k}", k + 1
    out.mkdir(parents=True)
    return out


def _nemesis(cfg: RunConfig, cluster: Any, seed: int, console: Console) -> Nemesis:
    if cfg.faults:
        names = parse_names(cfg.faults)
        if cfg.via == "toxiproxy":
            names = ["partition-toxiproxy" if n == "partition" else n for n in names]
        return Nemesis(cluster, names=names, params=cfg.fault_params, duration=cfg.duration, seed=seed,
                       log=console.print)
    rng = random.Random(seed)
    plan = []
    if cfg.kill:
        plan.append(make("kill", cluster, rng=rng, count=cfg.kill))
    if cfg.pause:
        plan.append(make("pause", cluster, rng=rng, count=cfg.pause))
    if cfg.partition:
        plan.append(partition_class(cfg.via)(cluster, rng=rng, shape=cfg.partition))
    return Nemesis(cluster, plan=plan, duration=cfg.duration, seed=seed, log=console.print)


def run(cfg: RunConfig, console: Console) -> int:
    backend = pick_backend(cfg.backend)
    links = pick_links(cfg.links, needs_proxies=cfg.via == "toxiproxy" or bool(cfg.faults), backend=backend)
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(1, 10**6)
    outdir = _outdir(cfg.runs_dir)
    if cfg.partition and cfg.via == "iptables" and backend == "local" and os.geteuid() != 0:
        console.print(f"[yellow]warning: skipping the {cfg.partition} partition: iptables partitions on the local "
                      "backend need root (use --via toxiproxy)[/yellow]")
        cfg.partition = None
    workdir = Path(tempfile.mkdtemp(prefix="harness-run-"))
    cluster = make_cluster(backend, replicas=cfg.replicas, runners=cfg.runners, workdir=workdir,
                           failure_timeout=cfg.failure_timeout, links=links, console=console)
    what = f"faults {cfg.faults} at random" if cfg.faults else (
        f"kill {cfg.kill}, pause {cfg.pause}, partition {cfg.partition or '-'}"
        + (f" via {cfg.via}" if cfg.partition else ""))
    load = (f"two clients submitting {cfg.rate:g} jobs/s" if cfg.faults else f"{cfg.jobs} {cfg.kind} jobs")
    console.print(f"run {outdir} on the [bold]{backend}[/bold] backend ({links} links): {cfg.nodes} nodes, "
                  f"R={cfg.replicas}, {load}, {what}, {cfg.duration:g} s, seed {seed}")
    rec = HistoryRecorder(outdir / "history.jsonl")
    if cfg.faults:
        return _soak(cfg, cluster, rec, seed, outdir, workdir, console)
    nem: Nemesis | None = None
    result: dict = {}
    try:
        with console.status(f"starting {cfg.nodes} nodes"):
            cluster.up(cfg.nodes, timeout=240 if backend == "swarm" else 120)
        console.print(node_table(cluster))
        nem = _nemesis(cfg, cluster, seed, console)
        t0 = time.monotonic()
        nem.start()
        with progress_bar(console) as prog:
            t_sub = prog.add_task("acknowledged", total=cfg.jobs)
            t_done = prog.add_task("completed", total=cfg.jobs)

            def on_progress(acked: int, done: int) -> None:
                prog.update(t_sub, completed=acked)
                prog.update(t_done, completed=done)

            def work() -> None:
                try:
                    result["timing"] = run_workload(cluster.client_urls(), cluster.token, rec, jobs=cfg.jobs,
                                                    kind=cfg.kind, rate=cfg.jobs / max(1.0, cfg.duration * 0.8),
                                                    drain_timeout=1e9, on_progress=on_progress, seed=seed)
                except BaseException as e:  # noqa: BLE001
                    result["error"] = e

            th = threading.Thread(target=work, daemon=True)
            th.start()
            th.join(cfg.duration)
            nem.join(max(0.0, t0 + 2 * cfg.duration - time.monotonic()))  # every planned fault gets its window
            nem.stop_and_heal()
            console.print("all faults healed; draining")
            try:
                cluster.wait_converged(60)
            except HarnessError as e:
                console.print(f"[yellow]warning: {str(e).splitlines()[0][:200]}[/yellow]")
            th.join(cfg.drain)
        rec.close()
        if th.is_alive():
            console.print(f"[yellow]drain deadline ({cfg.drain:g} s) passed with results still missing[/yellow]")
        if "error" in result:
            raise HarnessError(f"workload failed: {result['error']}")
        if nem.error is not None:
            raise HarnessError(f"nemesis failed: {nem.error}")
        proms = promotions(cluster)
        states = cluster.states()
        _save_logs(cluster, outdir)
        verdict = judge(load_history(outdir / "history.jsonl", allow_truncated_tail=True))
        timing = result.get("timing", {})
        windows = [{**w, "start": w["start"] - t0, "end": (w["end"] or w["start"]) - t0} for w in nem.windows]
        out = verdict.to_dict()
        out.update({"seed": seed, "promotions": proms, "faults": cluster.faults, "windows": windows,
                    "final_reads": timing.get("final_reads", 0), "no_result_reasons": timing.get("no_result", {}),
                    "backend": backend, "links": links, "nodes": cfg.nodes, "replicas": cfg.replicas,
                    "jobs": cfg.jobs, "kinds": timing.get("kinds", {}),
                    "duplicates_dropped": {k: v.get("duplicates_dropped", 0) for k, v in states.items()},
                    "results-checked": timing.get("checked", 0), "unchecked": timing.get("unchecked", {}),
                    "wrong-results": timing.get("wrong", {}), "raised-then-ran": timing.get("raised_then_ran", []),
                    "latency": latency_per_window(timing.get("latencies", []), nem.windows)})
        (outdir / "results.json").write_text(json.dumps(out, indent=1, default=str))
        plots(outdir, t0, timing, nem.windows)
    finally:
        if nem is not None:
            try:
                nem.stop_and_heal()
            except Exception:  # noqa: BLE001 - the cluster is stopped next anyway
                pass
        remember_ids(cluster)
        cluster.stop()
        if backend == "local":
            shutil.rmtree(workdir, ignore_errors=True)
    ok = verdict.valid and not timing.get("wrong_count")
    console.print("submit latency per fault window (p99 / max): " + "; ".join(
        f"{r['window']} {r['p99_ms']:.0f} / {r['max_ms']:.0f} ms" for r in out["latency"]))
    report(console, cluster, timing, verdict, proms, outdir, seed, ok)
    return 0 if ok else 1


def _soak(cfg: RunConfig, cluster: Any, rec: HistoryRecorder, seed: int, outdir: Path, workdir: Path,
          console: Console) -> int:
    names = parse_names(cfg.faults or "")
    if cfg.via == "toxiproxy":
        names = ["partition-toxiproxy" if n == "partition" else n for n in names]
    try:
        with console.status(f"starting {cfg.nodes} nodes"):
            cluster.up(cfg.nodes, timeout=120)
        console.print(node_table(cluster))
        t0 = time.monotonic()
        res = run_soak(cluster, names, duration=cfg.duration, seed=seed, rate=cfg.rate, drain=cfg.drain,
                       recorder=rec, log=console.print)
        rec.close()
        _save_logs(cluster, outdir)
        out = res.verdict.to_dict()
        out.update({"seed": seed, "valid-soak": res.valid, "faults": cluster.faults, "promotions": promotions(cluster),
                    "windows": [{**w, "start": w["start"] - t0, "end": (w["end"] or w["start"]) - t0}
                                for w in res.windows],
                    "raised-then-ran": res.raised_then_ran, "mismatched": res.mismatched,
                    "reruns": res.reruns, "reruns-by-fault": res.reruns_by_fault, "latency": res.latency,
                    "backend": cluster.backend, "nodes": cfg.nodes, "replicas": cfg.replicas})
        (outdir / "results.json").write_text(json.dumps(out, indent=1, default=str))
        plots(outdir, t0, res.timing, res.windows)
    finally:
        remember_ids(cluster)
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    colour = "green" if res.valid else "red"
    lines = res.lines()
    console.print(f"[bold {colour}]{lines[0]}[/bold {colour}]")
    for line in lines[1:]:
        console.print(line)
    console.print(f"results in {outdir}")
    return 0 if res.valid else 1


def _save_logs(cluster: Any, outdir: Path) -> None:
    for n in cluster.nodes:
        try:
            text = cluster.logs(n) if hasattr(cluster, "logs") else n.log_path.read_text(errors="replace")
            (outdir / f"{n.name}.log").write_text(text)
        except OSError:
            pass


def report(console: Console, cluster: Any, timing: dict, verdict: Any, proms: list[dict], outdir: Path,
           seed: int, ok: bool) -> None:
    """The lines a run ends with: jobs per node, kinds, checked values, the verdict, promotions."""
    if timing.get("ran_on"):
        table = Table(title="jobs run per node")
        table.add_column("node")
        table.add_column("jobs", justify="right")
        for name, count in ran_by_node(cluster, timing["ran_on"]).items():
            table.add_row(name, str(count))
        console.print(table)
    if timing.get("kinds"):
        console.print("job kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(timing["kinds"].items())))
    console.print(f"results checked against the expected value: {timing.get('checked', 0)}, "
                  f"wrong: {timing.get('wrong_count', 0)}")
    for reason, count in sorted(timing.get("unchecked", {}).items()):
        console.print(f"  not checked: {count} {reason}")
    if timing.get("raised_then_ran"):
        console.print(f"[red]{len(timing['raised_then_ran'])} futures raised an error for a job the grid ran[/red]")
    colour = "green" if ok else "red"
    console.print(f"[bold {colour}]{summary_line(verdict)}[/bold {colour}] (seed {seed})")
    real = [p for p in proms if p.get("jobs", 0)]
    for p in real:
        console.print(f"  {p['dead_name']}'s backup replicas promoted on {p['by_name']} "
                      f"({p['jobs']} jobs, epoch {p.get('epoch')})")
    if len(proms) > len(real):
        console.print(f"  {len(proms) - len(real)} other promotions found no backup replicas to take over")
    if not proms:
        console.print("  no backup replicas were promoted")
    console.print(f"results in {outdir}")
