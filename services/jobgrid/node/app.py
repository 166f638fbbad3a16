"""Start and stop one node: HTTP server, grid protocol, runners. Shutdown order: stop taking work,
stop listening, drain, close the pool, close the store (aiohttp web_runner's order)."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from pathlib import Path

import structlog
from aiohttp import web

from ..settings import NodeSettings
from .edges import GuardedRunner, redact_server_logs
from .grid import Grid
from .http import make_middlewares, routes
from .metrics import Metrics
from .peers import Peers, PeerTimeouts
from .pool import WorkerPool
from .runner import Runner

log = structlog.get_logger("jobgrid.node")


def server_ssl(settings: NodeSettings) -> ssl.SSLContext | None:
    if not settings.tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(settings.tls.cert), str(settings.tls.key))
    if settings.mtls:  # a certificate the CA verifies makes the caller a peer; clients come without one
        ctx.load_verify_locations(cafile=str(settings.tls.ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_ssl(settings: NodeSettings) -> ssl.SSLContext | None:
    if not settings.tls.enabled:
        return None
    ctx = ssl.create_default_context(cafile=str(settings.tls.ca) if settings.tls.ca else None)
    if settings.mtls:  # the node's own certificate is its peer credential
        ctx.load_cert_chain(str(settings.tls.cert), str(settings.tls.key))
    return ctx


class Node:
    """A server plus its runners, as one asyncio application."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.peers = Peers(token=settings.peer_secret, scheme=settings.scheme, ssl_context=client_ssl(settings),
                           timeouts=PeerTimeouts.of(settings.timing),
                           local_host=settings.host if settings.host not in ("0.0.0.0", "::", "") else None,
                           stream=settings.peer_transport == "stream", dial=dict(settings.dial))
        self.grid = Grid(settings, self.peers, self.metrics)  # names itself in every peer call (X-Jobgrid-Node)
        self.pool: WorkerPool | None = None
        self.runner: Runner | None = None
        self.extra: dict = {}
        self.web_runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body,
                              middlewares=make_middlewares(self.settings))
        app["grid"] = self.grid
        app.add_routes(routes(self.grid, self.extra))

        async def close_streams(_: web.Application) -> None:  # after the listener stops, before the drain
            await self.extra["streams"].close()  # an open WebSocket would hold the drain for its whole timeout
        app.on_shutdown.append(close_streams)
        from ..dashboard import add_dashboard  # noqa: PLC0415 - optional part, kept out of the core
        add_dashboard(app, self.grid, self.extra)
        return app

    async def start(self) -> None:
        s = self.settings
        assert s.data_dir is not None
        if s.runners > 0:
            self.pool = WorkerPool(s.runners, work_root=Path(s.data_dir) / "work", node_id=self.grid.id,
                                   user=s.job_user,
                                   env={"JOBGRID_ALLOW_MODULES": ",".join(s.allow_modules)} if s.allow_modules else None)
            await self.pool.start()
            g = self.grid
            self.runner = Runner(g.ctx, g.keeper, g.jobs, g.owners, g.search, self.pool, s.runners)
            self.extra["runner"] = self.runner
        redact_server_logs()
        self.web_runner = GuardedRunner(self.make_app(), max_pending=s.max_pending_per_client,
                                        header_timeout=s.header_timeout, access_log=None, handler_cancellation=True,
                                        keepalive_timeout=75.0, max_line_size=8190, max_field_size=8190)
        await self.web_runner.setup()
        site = web.TCPSite(self.web_runner, s.host, s.port, ssl_context=server_ssl(s), backlog=1024,
                           reuse_address=True)
        await site.start()
        g = self.grid
        await g.start()
        if self.runner is not None:
            g.leaving.runner = self.runner
            g.ctx.spawn(self.runner.loop(), "runner")
            g.ctx.spawn(self.runner.report_loop(), "reporter")
            g.ctx.spawn(self.runner.renew_loop(), "renewer")
        log.info("node_started", node=g.id, host=s.host, port=s.port, runners=s.runners,
                 replicas=g.mem.replicas, ring_size=len(g.mem.ring.members), data_dir=str(s.data_dir))

    async def stop(self) -> None:
        g = self.grid
        g.ctx.stopping = True
        if self.runner is not None:
            await self.runner.close()
        if self.web_runner is not None:
            await self.web_runner.cleanup()
        if self.pool is not None:
            await self.pool.close()
        await self.peers.close()
        await g.close()
        log.info("node_stopped", node=g.id)


async def serve(settings: NodeSettings) -> int:
    """Run a node until SIGINT, or until SIGTERM or POST /leave made it leave the grid gracefully (a second
    SIGTERM stops it at once). Returns the exit code: 0, or `leave.EXIT_TIMED_OUT` after a leave that ran
    out of time (the grid then treats the node as failed)."""
    node = Node(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    leaving: list[asyncio.Task] = []

    def leave() -> None:
        if leaving or not node.grid.ctx.joined.is_set() or stop.is_set():
            stop.set()  # not in a ring yet (or asked twice): nothing to hand over, stop now
            return
        task = node.grid.leaving.begin()
        task.add_done_callback(lambda _: stop.set())
        leaving.append(task)

    node.extra["leave"] = leave
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, leave)
    watch = _watch_parent(stop)
    code = 0
    try:
        start = asyncio.ensure_future(node.start())
        waiter = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if start in done:
            start.result()
            await waiter
        else:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
        if leaving and leaving[0].done() and not leaving[0].cancelled():
            if leaving[0].exception() is not None:
                log.error("leave_failed", error=repr(leaving[0].exception()))
                code = 1
            else:
                code = leaving[0].result()
    finally:
        if watch is not None:
            watch.cancel()
        for t in leaving:
            t.cancel()
        await node.stop()
    return code


def _watch_parent(stop: asyncio.Event) -> asyncio.Task | None:
    """With JOBGRID_EXIT_WITH_PARENT=<pid> (set by test and benchmark harnesses), stop when that process
    is gone: the node is re-parented, so its parent pid changes."""
    raw = os.environ.get("JOBGRID_EXIT_WITH_PARENT")
    if not raw or not raw.isdigit():
        return None
    parent = int(raw)

    async def watch() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(0.5)
        log.warning("parent_gone", parent=parent)
        stop.set()
    return asyncio.ensure_future(watch())
