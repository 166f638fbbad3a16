"""`harness`: bring a jobgrid cluster up (Docker containers or local processes), break it, judge it.

    harness image [--base debian|pull|auto]
    harness up --nodes 5 [--replicas 3] [--backend docker|swarm|local] [--links toxiproxy|direct] [--runners N]
    harness status | harness logs NODE | harness heal | harness down
    harness submit --jobs N [--kind noop|sleep|cpu|fail|script|call|mix] [--rate R]
    harness chaos --kill N | --pause N | --restart | --restart-all | --resume | --partition SHAPE [--via ...]
                  | --latency 200ms[:50ms] | --bandwidth 64KB/s | --blackhole NODE | --reset NODE
                  | --slow-close MS | --flap A,B [--period 2s]   [--node N | --between A,B] [--direction ...]
    harness run --nodes 5 --jobs 2000 --kill 2 --partition halves --duration 60
    harness run --faults kill,pause,partition,latency,blackhole,flap --duration 120 [--seed S]

Every fault is built from the registry in harness/faults.py. Domain errors print one red line and exit
non-zero.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from typing import Any

from rich.console import Console

from jobgrid.errors import JobgridError

from . import units
from .backend import PARTITIONS
from .cluster import (STATE_DIR, docker_answers, load_cluster, make_cluster, node_table, pick_backend, pick_links,
                      progress_bar, save_state, state_path, toxics_table)
from .errors import HarnessError
from .faults import FAULTS, make
from .faults_net import partition_class
from .history import HistoryRecorder, summary_line
from .nemesis import heal_cluster
from .run import RunConfig, run
from .workload import KINDS, judge, run_workload

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, highlight=False)


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
    links = pick_links(a.links, backend=backend)
    workdir = (STATE_DIR / "local").resolve() if backend == "local" else None
    if workdir is not None and workdir.exists():
        shutil.rmtree(workdir)
    cluster = make_cluster(backend, replicas=a.replicas, runners=a.runners, workdir=workdir, links=links,
                           failure_timeout=a.failure_timeout, console=console)
    try:
        with console.status(f"starting {a.nodes} nodes ({backend}, {links} links); waiting until all server "
                            "lists agree"):
            cluster.up(a.nodes, timeout=240 if backend == "swarm" else 120)
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
    toxics = toxics_table(cluster)
    if toxics is not None:
        console.print(toxics if toxics.row_count else "no toxics: every link is clean")
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
    console.print("[green]cluster down[/green]: nodes, rules, proxies" + {
        "docker": ", network and volumes", "swarm": ", the stack (service, network, secrets), volumes and gateway"}.get(
        cluster.backend, "") + " removed")
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    cluster = load_cluster()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    rec = HistoryRecorder(STATE_DIR / "history.jsonl")
    with progress_bar(console) as prog:
        task = prog.add_task("jobs", total=a.jobs)
        timing = run_workload(cluster.client_urls(), cluster.token, rec, jobs=a.jobs, kind=a.kind,
                              rate=a.rate, drain_timeout=a.timeout,
                              on_progress=lambda acked, done: prog.update(task, completed=done))
    rec.close()
    res = judge(rec.ops)
    lat = sorted(d for _, d in timing["latencies"])
    if lat:
        console.print(f"submit latency p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
                      f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.1f} ms")
    console.print(f"{timing['acked']} acknowledged, {timing['unknown']} with unknown outcome (no quorum reachable?), "
                  f"{len(res.ok)} results, history in {STATE_DIR / 'history.jsonl'}")
    console.print(summary_line(res))
    return 0 if res.valid else 1


def _targets(a: argparse.Namespace) -> dict:
    out: dict[str, Any] = {"direction": a.direction}
    if a.between:
        pair = [x.strip() for x in a.between.split(",")]
        if len(pair) != 2:
            raise HarnessError("--between takes two names: n1,n3 (or client,n2)")
        out["between"] = tuple(pair)
    elif a.node:
        out["nodes"] = a.node
    return out


def chaos_fault(cluster: Any, a: argparse.Namespace) -> Any:
    """The fault `harness chaos` was asked for, from the registry (None for --restart / --resume)."""
    last = [n.name for n in cluster.live()]
    if a.stagger < 0 or (a.stagger and not a.restart_all):
        raise HarnessError("--stagger takes seconds >= 0 and goes with --restart-all")
    if a.kill:
        return make("kill", cluster, nodes=a.node or last[-a.kill:], count=a.kill, keep_majority=False)
    if a.pause:
        return make("pause", cluster, nodes=a.node or last[-a.pause:], count=a.pause)
    if a.restart_all:
        return make("restart-all", cluster, stagger=a.stagger)
    if a.partition:
        return partition_class(a.via)(cluster, shape=a.partition)
    t = _targets(a)
    if a.latency:
        ms, jitter = units.latency(a.latency)
        return make("latency", cluster, ms=ms, jitter=jitter, **_need_target(t, "--latency"))
    if a.bandwidth:
        return make("bandwidth", cluster, rate_kb=units.rate_kb(a.bandwidth), **_need_target(t, "--bandwidth"))
    if a.blackhole:
        return make("blackhole", cluster, nodes=[a.blackhole])
    if a.reset:
        return make("reset", cluster, nodes=[a.reset], direction=a.direction)
    if a.slow_close is not None:
        return make("slow-close", cluster, ms=units.duration_ms(a.slow_close), **_need_target(t, "--slow-close"))
    if a.flap:
        pair = tuple(x.strip() for x in a.flap.split(","))
        if len(pair) != 2:
            raise HarnessError("--flap takes two node names: n1,n2")
        return make("flap", cluster, between=pair, period=units.seconds(a.period))
    return None


def _need_target(t: dict, flag: str) -> dict:
    if "nodes" not in t and "between" not in t:
        raise HarnessError(f"{flag} needs a target: --node NODE or --between A,B")
    return t


def cmd_chaos(a: argparse.Namespace) -> int:
    cluster = load_cluster()
    try:
        if a.restart:
            for n in [n for n in cluster.nodes if n.state == "killed"]:
                cluster.restart(n)
                console.print(f"restarted {n.name}")
            return 0
        if a.resume:
            for n in [n for n in cluster.nodes if n.state == "paused"]:
                cluster.resume(n)
                console.print(f"resumed {n.name}")
            return 0
        fault = chaos_fault(cluster, a)
        rec = fault.apply()
        console.print(rec["description"])
        hold = a.duration if a.duration is not None else (30.0 if a.flap else None)
        if hold is not None:
            if a.flap and a.duration is None:
                console.print("flapping for 30 s (--duration to change); Ctrl-C heals now")
            try:
                time.sleep(hold)
            finally:
                fault.heal()
                console.print(f"healed: {fault.describe()}" + (f" ({fault.record['flips']} flips)"
                                                               if "flips" in fault.record else ""))
    finally:
        save_state(cluster)
    return 0


def cmd_heal(a: argparse.Namespace) -> int:
    cluster = load_cluster()
    try:
        heal_cluster(cluster)
    finally:
        save_state(cluster)
    console.print("[green]healed[/green]: partitions and toxics removed, paused nodes resumed, killed nodes restarted")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    cfg = RunConfig(nodes=a.nodes, replicas=a.replicas, runners=a.runners, jobs=a.jobs, kind=a.kind, kill=a.kill,
                    pause=a.pause, partition=a.partition, via=a.via, faults=a.faults, seed=a.seed,
                    duration=a.duration, drain=a.drain, failure_timeout=a.failure_timeout, backend=a.backend,
                    links=a.links, runs_dir=a.runs_dir, rate=a.rate)
    return run(cfg, console)


# ---- argparse ----------------------------------------------------------------------------------------------
def _cluster_opts(s: argparse.ArgumentParser, runners: int) -> None:
    s.add_argument("--nodes", type=int, default=5, help="nodes in the grid (default 5)")
    s.add_argument("--replicas", type=int, default=3, help="copies of each job, owner included (default 3)")
    s.add_argument("--runners", type=int, default=runners, help=f"worker processes per node (default {runners})")
    s.add_argument("--backend", choices=("docker", "swarm", "local"),
                   help="docker containers, a Docker Swarm stack (deploy/swarm; a one-host swarm is made if this "
                        "Engine is not in one) or local processes (default: docker when a daemon answers)")
    s.add_argument("--links", choices=("toxiproxy", "direct"),
                   help="toxiproxy: every link through its own Toxiproxy proxy; direct: none (default: toxiproxy "
                        "when a server can be had)")
    s.add_argument("--failure-timeout", type=float, default=2.0,
                   help="seconds of silence before a node is declared dead (default 2.0)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="chaos harness for jobgrid clusters")
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("image", help="build the node image (offline)")
    s.add_argument("--base", choices=("auto", "debian", "pull"), default="auto",
                   help="base image: debian (debootstrap), pull (python:3.11-slim) or auto (default: reuse, "
                        "else debian, else pull)")
    s.set_defaults(fn=cmd_image)

    s = sub.add_parser("up", help="start a cluster and save its state in .harness/")
    _cluster_opts(s, runners=2)
    s.set_defaults(fn=cmd_up)

    sub.add_parser("status", help="the cluster's nodes and the toxics in force").set_defaults(fn=cmd_status)
    s = sub.add_parser("logs", help="a node's log")
    s.add_argument("node", help="node name (n1, n2, ...)")
    s.add_argument("--lines", type=int, default=100, help="last lines to show (default 100)")
    s.set_defaults(fn=cmd_logs)
    sub.add_parser("down", help="remove everything `up` made: nodes, rules, proxies (safe twice)"
                   ).set_defaults(fn=cmd_down)

    s = sub.add_parser("submit", help="a workload, recorded to .harness/history.jsonl")
    s.add_argument("--jobs", type=int, default=100, help="jobs to submit (default 100)")
    s.add_argument("--kind", choices=KINDS, default="noop", help="job kind; mix: all kinds in turn (default noop)")
    s.add_argument("--rate", type=float, help="submissions per second (default: as fast as acknowledged)")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for results (default 120)")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("chaos", help="inject one fault (kept until `harness heal`, or for --duration)")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--kill", type=int, metavar="N", help="SIGKILL N nodes (a count; default: the last N live ones, or --node)")
    g.add_argument("--restart", action="store_true", help="start every killed node again on its data")
    g.add_argument("--restart-all", action="store_true", help="SIGKILL every node, then start all again")
    s.add_argument("--stagger", type=float, default=0.0, metavar="S",
                   help="with --restart-all: start the nodes one every S seconds (default 0: all at once)")
    g.add_argument("--pause", type=int, metavar="N", help="SIGSTOP / docker pause N nodes (a count; default: the last N live ones, or --node)")
    g.add_argument("--resume", action="store_true", help="resume every paused node")
    g.add_argument("--partition", choices=PARTITIONS, help="cut the network into this shape (see --via; default: no partition)")
    g.add_argument("--latency", metavar="MS[:JITTER]",
                   help="delay each direction of the target's data, e.g. 200ms or 200ms:50ms (unit ms by default)")
    g.add_argument("--bandwidth", metavar="RATE", help="limit the target's links, e.g. 64KB/s (unit KB/s by default)")
    g.add_argument("--blackhole", metavar="NODE", help="NODE stays up, all its traffic hangs (Toxiproxy timeout 0, until heal by default)")
    g.add_argument("--reset", metavar="NODE", help="reset NODE's connections (TCP RST) as data arrives (until heal by default)")
    g.add_argument("--slow-close", metavar="MS", help="delay the close of the target's connections (unit ms)")
    g.add_argument("--flap", metavar="A,B", help="take the link between A and B down and up (see --period; for 30 s by default)")
    s.add_argument("--via", choices=("iptables", "toxiproxy"), default="iptables",
                   help="--partition with iptables DROP rules (hang) or disabled Toxiproxy proxies (refused) "
                        "(default iptables)")
    s.add_argument("--node", action="append", metavar="NODE",
                   help="target node of a toxic, kill or pause (repeatable); a toxic covers all its links, "
                        "clients' included (default: none, kill/pause pick the last live nodes)")
    s.add_argument("--between", metavar="A,B", help="target the links between A and B ('client' allowed; default: none)")
    s.add_argument("--direction", choices=("in", "out", "both"), default="both",
                   help="which data a toxic acts on, seen from --node (or A of --between) (default both)")
    s.add_argument("--period", default="2s", help="--flap: each down or up phase lasts period/2..period "
                                                  "(unit s by default; default 2s)")
    s.add_argument("--duration", type=float,
                   help="seconds to hold the fault, then heal it (default: until `harness heal`; --flap: 30)")
    s.set_defaults(fn=cmd_chaos)
    sub.add_parser("heal", help="undo every fault: partitions, toxics, pauses, kills").set_defaults(fn=cmd_heal)

    s = sub.add_parser("run", help="up, workload under a nemesis, heal, drain, check, down")
    _cluster_opts(s, runners=2)
    s.add_argument("--jobs", type=int, default=2000, help="jobs to submit over the run (default 2000)")
    s.add_argument("--kind", choices=KINDS, default="mix", help="job kind; mix: all kinds in turn (default mix)")
    s.add_argument("--kill", type=int, default=0, metavar="N", help="plan: SIGKILL N nodes in one slot (default 0)")
    s.add_argument("--pause", type=int, default=0, metavar="N", help="plan: pause N nodes in one slot (default 0)")
    s.add_argument("--partition", choices=PARTITIONS, help="plan: a partition of this shape in one slot (default none)")
    s.add_argument("--via", choices=("iptables", "toxiproxy"), default="iptables",
                   help="how partitions cut links (default iptables)")
    s.add_argument("--faults", metavar="KIND,KIND",
                   help="instead of a plan, a seeded random mix of these kinds, one at a time: "
                        + ", ".join(FAULTS) + " (default: the plan)")
    s.add_argument("--seed", type=int, help="seed of the random choices, printed in the verdict (default: random)")
    s.add_argument("--rate", type=float, default=30.0,
                   help="--faults runs: submissions per second, two clients together, for all of --duration "
                        "(default 30; --jobs is for plans)")
    s.add_argument("--duration", type=float, default=60.0, help="seconds of workload under faults (default 60)")
    s.add_argument("--drain", type=float, default=60.0, help="seconds to wait for results after healing (default 60)")
    s.add_argument("--runs-dir", default="runs", help="where the run folder is written (default ./runs)")
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
