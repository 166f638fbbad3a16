"""`harness`: bring a jobgrid cluster up (Docker containers or local processes), break it, judge it.

    harness image [--base debian|pull|auto]
    harness up --nodes 5 [--replicas 3] [--backend docker|local] [--runners N]
    harness status | harness logs NODE | harness down
    harness submit --jobs N [--kind noop|sleep|cpu|fail|script|mix] [--rate R]
    harness chaos --kill N | --restart | --pause N | --resume | --partition SHAPE | --delay MS [--duration S]
    harness heal
    harness run --nodes 5 --jobs 2000 --kill 2 --partition halves --duration 60 [--backend ...]

`up` saves the cluster in .harness/state.json (mode 0600, it holds the cluster token) so the other
verbs find it. Domain errors print one red line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobgrid.errors import JobgridError
from jobgrid.history import HistoryRecorder, load_history, summary_line

from .backend import NETEM_MISSING, PARTITIONS, apply_partition, netem_available
from .errors import DockerUnavailable, HarnessError
from .local import LocalCluster, NodeHandle
from .workload import KINDS, Nemesis, judge, plots, promotions, ran_by_node, remember_ids, run_workload

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False)

STATE_DIR = Path(os.environ.get("HARNESS_STATE_DIR", ".harness"))


# ---- state -------------------------------------------------------------------------------------------------
class PidProc:
    """Stands in for subprocess.Popen for a node started by an earlier `harness up` (not our child)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    self.returncode = -9
                    return self.returncode
            return None
        except (FileNotFoundError, ProcessLookupError):
            self.returncode = -9
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        end = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > end:
                import subprocess  # noqa: PLC0415
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]


def state_path() -> Path:
    return STATE_DIR / "state.json"


def save_state(cluster: Any) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    if cluster.backend == "docker":
        st = cluster.to_state()
    else:
        st = {"backend": "local", "workdir": str(cluster.workdir), "token": cluster.token,
              "replicas": cluster.replicas, "runners": cluster.runners, "port": cluster.port,
              "chain": cluster.chain, "chain_made": cluster._chain_made, "timing": cluster.timing,
              "nodes": [{"name": n.name, "host": n.host, "port": n.port, "data_dir": str(n.data_dir),
                         "log_path": str(n.log_path), "pid": n.pid, "state": n.state, "node_id": n.node_id}
                        for n in cluster.nodes]}
    remember_ids(cluster)
    st["past_ids"] = cluster.past_ids
    st["faults"] = cluster.faults[-50:]
    p = state_path()
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(st, f, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)


def load_cluster(required: bool = True) -> Any:
    p = state_path()
    if not p.exists():
        if required:
            raise HarnessError("no cluster is up here (no .harness/state.json): run `harness up` first")
        return None
    st = json.loads(p.read_text())
    if st["backend"] == "docker":
        from .docker_backend import DockerCluster  # noqa: PLC0415
        c = DockerCluster.from_state(st)
    else:
        c = LocalCluster(Path(st["workdir"]), replicas=st["replicas"], runners=st["runners"], token=st["token"],
                         port=st["port"])
        c.timing = st["timing"]
        c.chain = st["chain"]
        c._chain_made = st["chain_made"]
        for nd in st["nodes"]:
            n = NodeHandle(name=nd["name"], host=nd["host"], port=nd["port"], data_dir=Path(nd["data_dir"]),
                           log_path=Path(nd["log_path"]), state=nd["state"], node_id=nd["node_id"])
            if nd["pid"]:
                n.proc = PidProc(nd["pid"])  # type: ignore[assignment]
                if n.proc.poll() is not None and n.state in ("running", "paused"):
                    n.state = "killed"
            c.nodes.append(n)
    c.faults = st.get("faults", [])
    c.past_ids = st.get("past_ids", {})
    return c


# ---- backends ---------------------------------------------------------------------------------------------
def docker_answers() -> bool:
    try:
        from .images import docker_client  # noqa: PLC0415
        docker_client(timeout=5).ping()
        return True
    except (DockerUnavailable, Exception):  # noqa: BLE001
        return False


def pick_backend(name: str | None) -> str:
    if name:
        return name
    return "docker" if docker_answers() else "local"


def make_cluster(backend: str, *, replicas: int, runners: int, workdir: Path | None = None,
                 heartbeat: float = 0.5, failure_timeout: float = 2.0) -> Any:
    token = secrets.token_urlsafe(24)
    if backend == "docker":
        from .docker_backend import DockerCluster  # noqa: PLC0415
        from .images import NODE_TAG, ensure_images  # noqa: PLC0415
        with console.status(f"building images ({NODE_TAG})"):
            ensure_images()
        return DockerCluster(replicas=replicas, runners=runners, token=token, heartbeat_interval=heartbeat,
                             failure_timeout=failure_timeout)
    if backend == "local":
        wd = workdir or Path(tempfile.mkdtemp(prefix="harness-local-"))
        # a 127.0.x.0/24 block of its own, away from the 127.0.0.x the tests use
        return LocalCluster(wd, replicas=replicas, runners=runners, token=token, heartbeat_interval=heartbeat,
                            failure_timeout=failure_timeout, first_octet=256 * (2 + os.getpid() % 30) + 10)
    raise HarnessError(f"unknown backend {backend!r}: docker or local")


def node_table(cluster: Any) -> Table:
    states = cluster.states()
    t = Table(title=f"jobgrid cluster ({cluster.backend})")
    for col in ("node", "address", "state", "id", "ring position (of 1)", "active", "backup", "epoch"):
        t.add_column(col)
    for n in cluster.nodes:
        st = states.get(n.name, {})
        counts = st.get("counts", {})
        loc = ""
        for m in (st.get("ring") or {}).get("members", []) if isinstance(st.get("ring"), dict) else []:
            if m.get("id") == st.get("id"):
                loc = f"{int(m.get('location', 0)) / 2 ** 64:.3f}"
        t.add_row(n.name, f"{n.host}:{n.port}", n.state, st.get("id", n.node_id or ""), loc,
                  str(counts.get("active", counts.get("activeQueue", ""))),
                  str(counts.get("backup", counts.get("backupQueue", ""))), str(st.get("epoch", "")))
    return t


# ---- verbs ---------------------------------------------------------------------------------------------------
def cmd_image(a: argparse.Namespace) -> int:
    from .images import ensure_images  # noqa: PLC0415
    tag = ensure_images(base_mode=a.base)
    console.print(f"[green]built {tag}[/green]")
    return 0


def cmd_up(a: argparse.Namespace) -> int:
    old = load_cluster(required=False)
    if old is not None and any(n.state in ("running", "paused") for n in old.nodes):
        raise HarnessError("a cluster is already up here: `harness down` first")
    backend = pick_backend(a.backend)
    workdir = (STATE_DIR / "local").resolve() if backend == "local" else None
    if workdir is not None and workdir.exists():
        shutil.rmtree(workdir)
    cluster = make_cluster(backend, replicas=a.replicas, runners=a.runners, workdir=workdir)
    try:
        with console.status(f"starting {a.nodes} nodes ({backend}) and waiting until all server lists agree"):
            cluster.up(a.nodes, timeout=120)
    except BaseException:
        cluster.stop()
        raise
    save_state(cluster)
    console.print(node_table(cluster))
    console.print(f"[green]{a.nodes} nodes up[/green]; token in {state_path()} (mode 0600)")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    cluster = load_cluster()
    console.print(node_table(cluster))
    return 0


def _node(cluster: Any, name: str) -> Any:
    for n in cluster.nodes:
        if n.name == name:
            return n
    raise HarnessError(f"no node {name!r}; nodes: {', '.join(n.name for n in cluster.nodes)}")


def cmd_logs(a: argparse.Namespace) -> int:
    cluster = load_cluster()
    print(cluster.log_tail(_node(cluster, a.node), a.lines))
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    cluster = load_cluster(required=False)
    if cluster is None:
        if docker_answers():
            from .docker_backend import remove_cluster  # noqa: PLC0415
            from .images import docker_client  # noqa: PLC0415
            n = remove_cluster(docker_client())
            if n:
                console.print(f"removed {n} leftover harness objects")
        console.print("nothing is up")
        return 0
    cluster.stop()
    if cluster.backend == "local":
        shutil.rmtree(cluster.workdir, ignore_errors=True)
    state_path().unlink(missing_ok=True)
    console.print("[green]cluster down[/green]: nodes, rules" + (", network and volumes" if cluster.backend ==
                                                                   "docker" else "") + " removed")
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    cluster = load_cluster()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    rec = HistoryRecorder(STATE_DIR / "history.jsonl")
    with _progress() as prog:
        task = prog.add_task("jobs", total=a.jobs)
        timing = run_workload([n.url for n in cluster.live()], cluster.token, rec, jobs=a.jobs, kind=a.kind,
                              rate=a.rate, drain_timeout=a.timeout,
                              on_progress=lambda acked, done: prog.update(task, completed=done))
    rec.close()
    res = judge(rec.ops)
    console.print(f"{timing['acked']} acknowledged, {timing['unknown']} with unknown outcome (no quorum reachable?), "
                  f"{len(res.ok)} results, history in {STATE_DIR / 'history.jsonl'}")
    console.print(summary_line(res))
    return 0 if res.valid else 1


def cmd_chaos(a: argparse.Namespace) -> int:
    cluster = load_cluster()
    try:
        if a.kill:
            live = cluster.live()
            if a.kill >= len(live):
                raise HarnessError(f"refusing to kill {a.kill} of {len(live)} live nodes")
            for n in live[-a.kill:]:
                cluster.kill(n)
                console.print(f"killed {n.name}")
        elif a.restart:
            for n in [n for n in cluster.nodes if n.state == "killed"]:
                cluster.restart(n)
                console.print(f"restarted {n.name}")
        elif a.pause:
            for n in cluster.live()[-a.pause:]:
                cluster.pause(n)
                console.print(f"paused {n.name}")
        elif a.resume:
            for n in [n for n in cluster.nodes if n.state == "paused"]:
                cluster.resume(n)
                console.print(f"resumed {n.name}")
        elif a.partition:
            rec = apply_partition(cluster, a.partition)
            console.print(f"partition {a.partition}: " + "; ".join(f"{g[0]} sees {' '.join(g[1:]) or 'nobody'}"
                                                                   for g in rec["sees"]))
        elif a.delay is not None:
            if hasattr(cluster, "delay"):
                cluster.delay(a.delay)
            else:
                raise HarnessError(NETEM_MISSING if not netem_available()
                                   else "latency faults are only implemented on the docker backend")
        else:
            raise HarnessError("say which fault: --kill N, --restart, --pause N, --resume, --partition, --delay MS")
        if a.duration:
            time.sleep(a.duration)
            _heal(cluster)
    finally:
        save_state(cluster)
    return 0


def _heal(cluster: Any) -> None:
    for n in [n for n in cluster.nodes if n.state == "paused"]:
        cluster.resume(n)
    cluster.heal()
    for n in [n for n in cluster.nodes if n.state == "killed"]:
        cluster.restart(n)


def cmd_heal(a: argparse.Namespace) -> int:
    cluster = load_cluster()
    try:
        _heal(cluster)
    finally:
        save_state(cluster)
    console.print("[green]healed[/green]: partitions removed, paused nodes resumed, killed nodes restarted")
    return 0


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def cmd_run(a: argparse.Namespace) -> int:
    backend = pick_backend(a.backend)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = Path(a.runs_dir) / stamp
    k = 1
    while outdir.exists():
        outdir = Path(a.runs_dir) / f"{stamp}-{k}"
        k += 1
    outdir.mkdir(parents=True)
    partition = a.partition
    if partition and backend == "local" and os.geteuid() != 0:
        console.print(f"[yellow]warning: skipping the {partition} partition: partitions on the local backend "
                      "need root (iptables)[/yellow]")
        partition = None
    if a.delay is not None and backend == "local":
        raise HarnessError(NETEM_MISSING if not netem_available()
                           else "latency faults are only implemented on the docker backend")
    workdir = Path(tempfile.mkdtemp(prefix="harness-run-"))
    cluster = make_cluster(backend, replicas=a.replicas, runners=a.runners, workdir=workdir,
                           failure_timeout=a.failure_timeout)
    console.print(f"run {outdir} on the [bold]{backend}[/bold] backend: {a.nodes} nodes, R={a.replicas}, "
                  f"{a.jobs} {a.kind} jobs, kill {a.kill}, partition {partition or '-'}, {a.duration:g} s")
    rec = HistoryRecorder(outdir / "history.jsonl")
    nem = None
    try:
        with console.status(f"starting {a.nodes} nodes"):
            cluster.up(a.nodes, timeout=120)
        console.print(node_table(cluster))
        nem = Nemesis(cluster, kill=a.kill, partition=partition, pause=a.pause, delay=a.delay,
                      duration=a.duration, log=console.print)
        t0 = time.monotonic()
        nem.start()
        result: dict = {}
        with _progress() as prog:
            t_sub = prog.add_task("acknowledged", total=a.jobs)
            t_done = prog.add_task("completed", total=a.jobs)

            def progress(acked: int, done: int) -> None:
                prog.update(t_sub, completed=acked)
                prog.update(t_done, completed=done)

            def work() -> None:
                try:
                    result["timing"] = run_workload([n.url for n in cluster.nodes], cluster.token, rec, jobs=a.jobs,
                                                    kind=a.kind, rate=a.jobs / max(1.0, a.duration * 0.8),
                                                    drain_timeout=1e9, on_progress=progress)
                except BaseException as e:  # noqa: BLE001
                    result["error"] = e

            th = threading.Thread(target=work, daemon=True)
            th.start()
            th.join(a.duration)
            nem.stop_and_heal()
            console.print("all faults healed; draining")
            try:
                cluster.wait_converged(60)
            except HarnessError as e:
                console.print(f"[yellow]warning: {str(e).splitlines()[0][:200]}[/yellow]")
            th.join(a.drain)
        rec.close()
        if th.is_alive():
            console.print(f"[yellow]drain deadline ({a.drain:g} s) passed with results still missing[/yellow]")
        if "error" in result:
            raise HarnessError(f"workload failed: {result['error']}")
        proms = promotions(cluster)
        states = cluster.states()
        for n in cluster.nodes:
            try:
                text = cluster.logs(n) if hasattr(cluster, "logs") else n.log_path.read_text(errors="replace")
                (outdir / f"{n.name}.log").write_text(text)
            except OSError:
                pass
        ops = load_history(outdir / "history.jsonl", allow_truncated_tail=True)
        verdict = judge(ops)
        out = verdict.to_dict()
        out.update({"promotions": proms, "faults": cluster.faults, "windows": [
            {**w, "start": w["start"] - t0, "end": (w["end"] or w["start"]) - t0} for w in nem.windows],
            "final_reads": result.get("timing", {}).get("final_reads", 0),
            "no_result_reasons": result.get("timing", {}).get("no_result", {}),
            "backend": backend, "nodes": a.nodes, "replicas": a.replicas, "jobs": a.jobs,
            "duplicates_dropped": {k: v.get("duplicates_dropped", 0) for k, v in states.items()},
            "kinds": result.get("timing", {}).get("kinds", {}),
            "results-checked": result.get("timing", {}).get("checked", 0),
            "wrong-results": result.get("timing", {}).get("wrong", {})})
        (outdir / "results.json").write_text(json.dumps(out, indent=1, default=str))
        plots(outdir, t0, result.get("timing", {}), nem.windows)
    finally:
        if nem is not None:
            try:
                nem.stop_and_heal()
            except Exception:  # noqa: BLE001
                pass
        remember_ids(cluster)
        cluster.stop()
        if backend == "local":
            shutil.rmtree(workdir, ignore_errors=True)
    timing = result.get("timing", {})
    ok = verdict.valid and not timing.get("wrong_count")
    colour = "green" if ok else "red"
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
    console.print(f"[bold {colour}]{summary_line(verdict)}[/bold {colour}]")
    if proms:
        for p in proms:
            console.print(f"  {p['dead_name']}'s backup replicas promoted on {p['by_name']} "
                          f"({p.get('jobs', 0)} jobs, epoch {p.get('epoch')})")
    else:
        console.print("  no backup replicas were promoted")
    console.print(f"results in {outdir}")
    return 0 if ok else 1


# ---- argparse ----------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="chaos harness for jobgrid clusters")
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("image", help="build the node image (offline)")
    s.add_argument("--base", choices=("auto", "debian", "pull"), default="auto")
    s.set_defaults(fn=cmd_image)

    s = sub.add_parser("up", help="start a cluster and save its state in .harness/")
    s.add_argument("--nodes", type=int, default=5)
    s.add_argument("--replicas", type=int, default=3)
    s.add_argument("--backend", choices=("docker", "local"))
    s.add_argument("--runners", type=int, default=2)
    s.set_defaults(fn=cmd_up)

    sub.add_parser("status", help="the cluster's nodes").set_defaults(fn=cmd_status)
    s = sub.add_parser("logs", help="a node's log")
    s.add_argument("node")
    s.add_argument("--lines", type=int, default=100)
    s.set_defaults(fn=cmd_logs)
    sub.add_parser("down", help="remove everything `up` made (safe twice)").set_defaults(fn=cmd_down)

    s = sub.add_parser("submit", help="a workload, recorded to .harness/history.jsonl")
    s.add_argument("--jobs", type=int, default=100)
    s.add_argument("--kind", choices=KINDS, default="noop")
    s.add_argument("--rate", type=float)
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for results")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("chaos", help="inject one fault")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--kill", type=int)
    g.add_argument("--restart", action="store_true")
    g.add_argument("--pause", type=int)
    g.add_argument("--resume", action="store_true")
    g.add_argument("--partition", choices=PARTITIONS)
    g.add_argument("--delay", type=int, metavar="MS")
    s.add_argument("--duration", type=float, help="heal after this many seconds")
    s.set_defaults(fn=cmd_chaos)
    sub.add_parser("heal", help="undo every fault").set_defaults(fn=cmd_heal)

    s = sub.add_parser("run", help="up, workload under a nemesis, heal, drain, check, down")
    s.add_argument("--nodes", type=int, default=5)
    s.add_argument("--replicas", type=int, default=3)
    s.add_argument("--runners", type=int, default=2)
    s.add_argument("--jobs", type=int, default=2000)
    s.add_argument("--kind", choices=KINDS, default="mix")
    s.add_argument("--kill", type=int, default=0)
    s.add_argument("--pause", type=int, default=0)
    s.add_argument("--partition", choices=PARTITIONS)
    s.add_argument("--delay", type=int, metavar="MS")
    s.add_argument("--duration", type=float, default=60.0)
    s.add_argument("--drain", type=float, default=60.0, help="seconds to wait for results after healing")
    s.add_argument("--failure-timeout", type=float, default=2.0)
    s.add_argument("--backend", choices=("docker", "local"))
    s.add_argument("--runs-dir", default="runs")
    s.set_defaults(fn=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return a.fn(a)
    except (HarnessError, JobgridError) as e:
        err_console.print(f"[red]error: {str(e).splitlines()[0] if str(e) else type(e).__name__}[/red]", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
