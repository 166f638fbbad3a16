"""`jobgrid` command line: run a node, submit jobs, read results, look at the grid.

Domain errors become one clear red line and a non-zero exit (httpx's CLI habit).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import ConfigError, JobgridError

err = Console(stderr=True)
out = Console()

ENV_INT = {"port": "JOBGRID_PORT", "replicas": "JOBGRID_REPLICAS", "runners": "JOBGRID_RUNNERS"}


def _env_join() -> tuple[str, int] | None:
    raw = os.environ.get("JOBGRID_JOIN")
    if not raw:
        return None
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"JOBGRID_JOIN must be HOST:PORT, got {raw!r}")
    return host, int(port)


def _read_token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_file", None):
        try:
            return Path(args.token_file).read_text().strip() or None
        except OSError as e:
            raise ConfigError(f"cannot read --token-file {args.token_file}: {e.strerror}") from None
    from .client import token_from_env
    return token_from_env(None)


def _secret(path: str | None, env: str) -> str | None:
    """A credential for the node: from a file flag, else `{env}` itself, else the file `{env}_FILE` names."""
    if not path and os.environ.get(env):
        return os.environ[env]
    path = path or os.environ.get(f"{env}_FILE") or None
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as e:
            raise ConfigError(f"cannot read {path} (the {env.lower()[8:].replace('_', ' ')}): {e.strerror}") from None
    return None


def _csv(flag: str | None, env: str) -> tuple[str, ...] | None:
    raw = flag if flag is not None else os.environ.get(env)
    if raw is None:
        return None
    return tuple(x.strip() for x in raw.replace(" ", ",").split(",") if x.strip())


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None


def _bool_env(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _int_env(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise ConfigError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


def cmd_server(args: argparse.Namespace) -> int:
    from .logs import configure
    from .node.app import serve
    from .settings import JOB_KINDS, TLS, NodeSettings, Timing, parse_dial

    from . import config
    config.apply(config.load(args.config))
    pos = args.args
    if len(pos) not in (0, 1, 3):
        raise ConfigError("usage: jobgrid server PORT [HOST PORT]  (or JOBGRID_PORT / JOBGRID_JOIN)")
    for p in pos[0:1] + pos[2:3]:
        if not p.isdigit():
            raise ConfigError(f"port must be a number, got {p!r}")
    port = int(pos[0]) if pos else _int_env("JOBGRID_PORT")
    if port is None:
        raise ConfigError("give the port: jobgrid server PORT (or set JOBGRID_PORT)")
    join = (pos[1], int(pos[2])) if len(pos) == 3 else _env_join()
    level = args.log_level or os.environ.get("JOBGRID_LOG_LEVEL", "info")
    configure(level)
    timing = Timing(heartbeat_interval=args.heartbeat_interval or _float_env("JOBGRID_HEARTBEAT_INTERVAL", 0.5),
                    failure_timeout=args.failure_timeout or _float_env("JOBGRID_FAILURE_TIMEOUT", 2.0),
                    lease_ttl=args.lease_ttl or _float_env("JOBGRID_LEASE_TTL", 3.0),
                    job_timeout=args.job_timeout or _float_env("JOBGRID_JOB_TIMEOUT", 300.0),
                    leave_timeout=args.leave_timeout or _float_env("JOBGRID_LEAVE_TIMEOUT", 60.0),
                    leave_grace=args.leave_grace or _float_env("JOBGRID_LEAVE_GRACE", 45.0))
    runners = args.runners if args.runners is not None else _int_env("JOBGRID_RUNNERS")
    kinds = _csv(args.allow_kinds, "JOBGRID_ALLOW_KINDS")

    def limit(flag: int | None, env: str, default: int) -> int | None:
        v = flag if flag is not None else _int_env(env)
        v = default if v is None else v
        return None if v == 0 else v  # 0: no limit
    settings = NodeSettings(
        port=port, host=args.host or os.environ.get("JOBGRID_HOST", "127.0.0.1"),
        advertise=args.advertise or os.environ.get("JOBGRID_ADVERTISE") or None, join=join,
        runners=runners if runners is not None else (os.cpu_count() or 1),
        data_dir=_path(args.data_dir or os.environ.get("JOBGRID_DATA_DIR")),
        replicas=args.replicas or _int_env("JOBGRID_REPLICAS"),
        token=_secret(args.token_file, "JOBGRID_TOKEN"),
        read_token=_secret(args.read_token_file, "JOBGRID_READ_TOKEN"),
        peer_secret=_secret(args.peer_secret_file, "JOBGRID_PEER_SECRET"),
        job_user=args.job_user or os.environ.get("JOBGRID_JOB_USER") or None,
        allow_kinds=frozenset(kinds) if kinds is not None else JOB_KINDS,
        allow_modules=_csv(args.allow_modules, "JOBGRID_ALLOW_MODULES") or (),
        max_pending_per_client=limit(args.max_pending_per_client, "JOBGRID_MAX_PENDING_PER_CLIENT", 128),
        max_streams_per_client=limit(args.max_streams_per_client, "JOBGRID_MAX_STREAMS_PER_CLIENT", 32),
        header_timeout=args.header_timeout or _float_env("JOBGRID_HEADER_TIMEOUT", 10.0),
        insecure=args.insecure,
        tls=TLS(cert=_path(args.tls_cert), key=_path(args.tls_key), ca=_path(args.tls_ca)),
        timing=timing, max_queued=args.max_queued,
        max_conns_per_client=args.max_conns_per_client, log_level=level, body_timeout=args.body_timeout,
        peer_transport=args.peer_transport or os.environ.get("JOBGRID_PEER_TRANSPORT", "stream"),
        dial=parse_dial(",".join(args.dial) if args.dial else os.environ.get("JOBGRID_DIAL", "")),
        force_new_cluster=args.force_new_cluster or _bool_env("JOBGRID_FORCE_NEW_CLUSTER"))
    if settings.force_new_cluster:
        err.print("[bold yellow]--force-new-cluster: if this node restarts without a majority of its ring, it "
                  "brings the grid up from the members that are back and removes the others. Use it only for "
                  "members that are gone for good, on one side only.[/]")
    from .node.secrecy import protect_credentials
    protect_credentials()  # out of the environment, /proc/<pid>/environ and other processes' reach
    if settings.insecure and not settings.token:
        err.print("[bold red]WARNING: --insecure: this node accepts jobs from anyone who can reach "
                  f"{settings.host}:{settings.port}, and jobs run arbitrary code.[/]")
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(serve(settings))  # 0, or leave.EXIT_TIMED_OUT after a leave that ran out of time


def _path(p: str | None) -> Path | None:
    return Path(p) if p else None


def _client(args: argparse.Namespace):
    from .client import Client
    addrs = args.address or [f"http://{args.host}:{args.port}"]
    return Client(addrs, token=_read_token(args), timeout=args.timeout)


def _submit_repeat(args: argparse.Namespace) -> int:
    """--repeat N: submit N copies in one batch; with --wait, a progress bar of N until all are in."""
    import concurrent.futures as cf
    from .client import script_spec
    with _client(args) as c:
        futs = c.submit_many([script_spec(Path(args.script), args.argv, timeout=args.job_timeout,
                                          priority=args.priority) for _ in range(args.repeat)])
        for f in futs:
            out.print(f.job_id)
        if not args.wait:
            return 0
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        with Progress(TextColumn("results"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err) as prog:
            task = prog.add_task("results", total=len(futs))
            for _ in cf.as_completed(futs, timeout=args.wait_timeout):
                prog.advance(task)
        results = [c.wait_result(f.job_id, timeout=args.wait_timeout) for f in futs]
        bad = [r for r in results if r.state != "succeeded"]
        colour = "red" if bad else "green"
        out.print(f"[{colour}]{len(results) - len(bad)}/{len(results)} succeeded, {len(bad)} failed[/]")
        for r in bad:
            print_result(r)
        return 1 if bad else 0


def cmd_submit(args: argparse.Namespace) -> int:
    if args.repeat != 1:
        if args.repeat < 1:
            raise ConfigError("--repeat must be at least 1")
        return _submit_repeat(args)
    with _client(args) as c:
        fut = c.submit_script(Path(args.script), args.argv, timeout=args.job_timeout, priority=args.priority)
        out.print(fut.job_id)
        if not args.wait:
            return 0
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        with Progress(SpinnerColumn(), TextColumn("waiting for {task.description}"), TimeElapsedColumn(),
                      console=err, transient=True) as prog:
            prog.add_task(fut.job_id)
            res = c.wait_result(fut.job_id, timeout=args.wait_timeout)
        print_result(res)
        return 0 if res.state == "succeeded" else 1


def print_result(res) -> None:
    """A result record: state, where it ran, output, value, error; the traceback once (a script's is in its stderr)."""
    colour = "green" if res.state == "succeeded" else "red"
    out.print(f"[{colour}]{res.job_id}: {res.state}[/] (node {res.node}, attempts {res.attempts}"
              + (f", exit code {res.exit_code}" if res.exit_code is not None else "") + ")")
    if res.stdout:
        out.print("[bold]stdout:[/]")
        out.out(res.stdout, end="" if res.stdout.endswith("\n") else "\n")
    if res.stderr:
        out.print("[bold]stderr:[/]")
        out.out(res.stderr, end="" if res.stderr.endswith("\n") else "\n")
    if res.value_format == "json" and res.value is not None:
        out.print(f"value: {res.value.decode()}")
    if res.error:
        out.print(f"[red]error: {res.error}[/]")
    if res.traceback and res.state == "failed" and res.traceback.strip() not in res.stderr:
        out.out(res.traceback)


def cmd_result(args: argparse.Namespace) -> int:
    with _client(args) as c:
        res = c.wait_result(args.id, timeout=args.wait_timeout if args.wait else 0.0)
        print_result(res)
        return 0 if res.state == "succeeded" else 1


def cmd_servers(args: argparse.Namespace) -> int:
    with _client(args) as c:
        sl = c.servers()
    print_servers(sl)
    return 0 if sl.serving else 1


def print_servers(sl) -> None:
    """The server list as a table, after a red line if the node that answered is not serving."""
    if not sl.serving:
        err.print(f"node {sl.me} is not serving: {sl.reason}", style="bold red", markup=False, soft_wrap=True)
    t = Table(title=f"ring epoch {sl.epoch} (answered by {sl.me})")
    for col in ("id", "location", "address", "active", "backup", "age", "status"):
        t.add_column(col)
    now = time.time()
    for s in sl.servers:
        t.add_row(s.id, f"{s.location:#018x}", f"{s.ip}:{s.port}", str(s.active), str(s.backup),
                  f"{max(0.0, now - s.timestamp):.1f}s" if s.timestamp else "-", s.status)
    out.print(t)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.jobs(args.state, args.limit)
    t = Table(title="jobs queued here")
    for col in ("id", "state", "kind", "name", "owner", "attempts", "priority"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["id"], r["state"], r["kind"], r.get("name", ""), r["owner"], str(r["attempts"]),
                  str(r.get("priority", 0)))
    out.print(t)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        done = c.cancel(*args.ids)
    for i in args.ids:
        out.print(f"{i}: {'cancelled' if i in done else 'not cancelled (already finished or unknown)'}")
    return 0 if len(done) == len(args.ids) else 1


def cmd_client(args: argparse.Namespace) -> int:
    """The seed's interactive client: script paths, Python expressions and the client's own commands."""
    from .interactive import run
    with _client(args) as c:
        return run(c, f"{args.host}:{args.port}", args.timeout)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobgrid", description="A grid of Python job servers and runners.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("server", help="start a node: jobgrid server PORT [HOST PORT]")
    s.add_argument("args", nargs="*", metavar="PORT [HOST PORT]",
                   help="port to listen on, then optionally HOST PORT of a live server to join through "
                        "(env JOBGRID_PORT, JOBGRID_JOIN=HOST:PORT; default: start a new grid)")
    s.add_argument("--host", help="bind address (env JOBGRID_HOST; default 127.0.0.1)")
    s.add_argument("--advertise", help="address other nodes use to reach this one (env JOBGRID_ADVERTISE; "
                                       "default: the bind address, 127.0.0.1 for 0.0.0.0)")
    s.add_argument("--runners", type=int, help="worker processes running jobs (env JOBGRID_RUNNERS; "
                                               "default: the number of CPUs)")
    s.add_argument("--data-dir", help="directory of the node's SQLite queues (env JOBGRID_DATA_DIR; "
                                      "default: the user data dir's jobgrid/node-PORT)")
    s.add_argument("--replicas", type=int, help="copies of each job, owner included, chosen by the grid's first node "
                   "(env JOBGRID_REPLICAS; default 3); a joining node adopts the grid's and refuses a different one")
    s.add_argument("--token-file", help="file holding the cluster token (env JOBGRID_TOKEN_FILE, or the token "
                                        "itself in JOBGRID_TOKEN; default: none, loopback only)")
    s.add_argument("--read-token-file", help="file holding a read-only client token (or JOBGRID_READ_TOKEN)")
    s.add_argument("--peer-secret-file", help="file holding the secret nodes prove themselves with; clients never "
                                              "get it (or JOBGRID_PEER_SECRET; not needed with mutual TLS)")
    s.add_argument("--job-user", help="run jobs as this account (node as root), away from the node's credentials")
    s.add_argument("--allow-kinds", help="job kinds accepted, comma-separated (default pickle,script,call); "
                                         "'call' alone refuses code")
    s.add_argument("--allow-modules", help="modules whose functions call jobs may name, comma-separated")
    s.add_argument("--max-pending-per-client", type=int,
                   help="connections per client IP still sending their request head (default 128; 0: no limit)")
    s.add_argument("--max-streams-per-client", type=int,
                   help="open /stream WebSockets per client IP (default 32; 0: no limit; peers: none)")
    s.add_argument("--header-timeout", type=float, help="seconds a new connection has to send its request head (10)")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback bind address without a token (default: refused)")
    s.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (default: plain HTTP)")
    s.add_argument("--tls-key", help="PEM private key of --tls-cert (default: none)")
    s.add_argument("--tls-ca", help="PEM CA bundle to verify other nodes' certificates (default: the system's)")
    s.add_argument("--heartbeat-interval", type=float,
                   help="seconds between heartbeats (env JOBGRID_HEARTBEAT_INTERVAL; default 0.5)")
    s.add_argument("--failure-timeout", type=float,
                   help="seconds of silence before a server is declared dead (env JOBGRID_FAILURE_TIMEOUT; "
                        "default 2.0; at least twice the heartbeat interval)")
    s.add_argument("--lease-ttl", type=float,
                   help="seconds a running job's lease lasts, renewed every third (env JOBGRID_LEASE_TTL; default 3.0)")
    s.add_argument("--job-timeout", type=float,
                   help="default per-job timeout in seconds (env JOBGRID_JOB_TIMEOUT; default 300)")
    s.add_argument("--leave-timeout", type=float,
                   help="seconds a graceful leave (SIGTERM, jobgrid leave) may take before the node exits anyway "
                        "(env JOBGRID_LEAVE_TIMEOUT; default 60)")
    s.add_argument("--leave-grace", type=float,
                   help="seconds running jobs may finish in a leave, at most 3/4 of the leave timeout "
                        "(env JOBGRID_LEAVE_GRACE; default 45)")
    s.add_argument("--max-queued", type=int, default=1_000_000,
                   help="jobs a node queues before it answers 503 (default 1000000)")
    s.add_argument("--max-conns-per-client", type=int, default=64,
                   help="concurrent requests allowed per client IP before 429 (default 64)")
    s.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client has to send a request body before 408 (default 30)")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log level (env JOBGRID_LOG_LEVEL; default info)")
    s.add_argument("--peer-transport", choices=["stream", "http"],
                   help="stream (default): node-to-node messages over one WebSocket per peer; http: a request "
                        "each (env JOBGRID_PEER_TRANSPORT)")
    s.add_argument("--dial", action="append", metavar="PEER=ADDR",
                   help="dial ADDR (HOST:PORT) to reach the peer advertised as PEER (HOST:PORT): NAT, sidecars, "
                        "proxies; repeatable or comma-separated (env JOBGRID_DIAL; default: dial peers as advertised)")
    s.add_argument("--force-new-cluster", action="store_true",
                   help="after an outage, bring the grid up from the members that are back even without a "
                        "majority of the ring (the others are removed); only for members gone for good "
                        "(or JOBGRID_FORCE_NEW_CLUSTER=true)")
    s.add_argument("--config", help="TOML settings file (default: ./jobgrid.toml if present)")
    s.set_defaults(fn=cmd_server)

    def client_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", default="127.0.0.1", help="node host (default 127.0.0.1)")
        sp.add_argument("--port", type=int, default=int(os.environ.get("JOBGRID_PORT", "8000")),
                        help="node port (env JOBGRID_PORT; default 8000)")
        sp.add_argument("--address", action="append",
                        help="node URL, repeatable, tried in order for failover (default http://HOST:PORT)")
        sp.add_argument("--token-file", help="file holding the cluster token (env JOBGRID_TOKEN / "
                                             "JOBGRID_TOKEN_FILE; default: none)")
        sp.add_argument("--timeout", type=float, default=30.0, help="seconds per request to a node (default 30)")

    c = sub.add_parser("client", help="interactive client: jobgrid client PORT")
    c.add_argument("port", type=int, help="port of the node to talk to")
    c.add_argument("--host", default="127.0.0.1", help="node host (default 127.0.0.1)")
    c.add_argument("--address", action="append",
                   help="node URL, repeatable, tried in order for failover (default http://HOST:PORT)")
    c.add_argument("--token-file", help="file holding the cluster token (env JOBGRID_TOKEN / JOBGRID_TOKEN_FILE; "
                                        "default: none)")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each result (default 300)")
    c.set_defaults(fn=cmd_client)

    sm = sub.add_parser("submit", help="submit a Python script: jobgrid submit SCRIPT [ARGS...]")
    sm.add_argument("script", help="path of the Python script to run as __main__")
    # "*" not REMAINDER, so options after the script (--wait --port P) stay options; script
    # arguments that start with "-" go after "--": jobgrid submit --wait -- s.py -x
    sm.add_argument("argv", nargs="*", help="the script's arguments (after -- when they start with -)")
    sm.add_argument("--wait", action="store_true", help="wait for the result and print it (default: print the id)")
    sm.add_argument("--wait-timeout", type=float, default=None,
                    help="seconds to wait for the result with --wait (default: no limit)")
    sm.add_argument("--job-timeout", type=float,
                    help="seconds the job may run before it is killed (default: the node's --job-timeout, 300)")
    sm.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    sm.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="submit N copies; with --wait, a progress bar until all N results are in, "
                         "then a one-line summary and each failure (default 1)")
    client_opts(sm)
    sm.set_defaults(fn=cmd_submit)

    r = sub.add_parser("result", help="print a job's result, stdout and stderr")
    r.add_argument("id", help="the job id (printed by submit)")
    r.add_argument("--wait", action="store_true", help="wait until the job has a result (default: ask once)")
    r.add_argument("--wait-timeout", type=float, default=None,
                   help="seconds to wait with --wait (default: no limit)")
    client_opts(r)
    r.set_defaults(fn=cmd_result)

    for name, fn, helptext in (("servers", cmd_servers, "the server list"),
                               ("status", cmd_servers, "the ring and its queues")):
        sp = sub.add_parser(name, help=helptext)
        client_opts(sp)
        sp.set_defaults(fn=fn)

    j = sub.add_parser("jobs", help="jobs queued on a node")
    j.add_argument("--state", choices=["queued", "leased"], help="only jobs in this state (default: both)")
    j.add_argument("--limit", type=int, default=100, help="at most this many rows (default 100)")
    client_opts(j)
    j.set_defaults(fn=cmd_jobs)

    k = sub.add_parser("cancel", help="cancel queued jobs")
    k.add_argument("ids", nargs="+", help="ids of the jobs to cancel")
    client_opts(k)
    k.set_defaults(fn=cmd_cancel)

    from .leave_cli import add_leave_command
    add_leave_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd == "client" and not args.address:
        args.address = [f"http://{args.host}:{args.port}"]
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except JobgridError as e:
        err.print(f"jobgrid: {e}", style="bold red", markup=False, soft_wrap=True)  # one line, verbatim
        return 2 if isinstance(e, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
