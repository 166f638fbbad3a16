"""The aiohttp shell: routes, auth, body limits, format negotiation, errors as JSON."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aiohttp import web

from ..codec import JSON, MSGPACK, decode, describe_error, encode
from ..errors import JobgridError, ProtocolError, StorageError, Unavailable
from ..logs import CAUSE_HEADER, new_cause, valid_cause
from ..protocol import (
    RUN_AT_HORIZON, CancelRequest, HandoffRequest, Heartbeat, JobStatus, JoinAnnounce, LockRequest, LookupRequest, RenewRequest,
    ReplicateRequest, ReportRequest, StealRequest, SubmitRequest, SubmitResponse, UnlockRequest, WaitRequest,
    WaitResponse, JobId, JobRecord, Result,
)
from ..lookup import Verdict
from ..settings import NodeSettings
from .auth import (
    NODE_HEADER, SESSION_COOKIE, Credentials, FRAME_ROLES, Caller, code_refusal, host_ok, origin_ok, identify, may, message_sender,
    named_ok, raw, refusal, required_role,
)
from .grid import PEER_MESSAGES, Grid
from .stream import STREAM_PATH, StreamBinding, StreamServer

log = structlog.get_logger("jobgrid.http")

PUBLIC = frozenset({"/healthz"})
_job_id_type = msgspec.json.Decoder(JobId)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

def _fmt(request: web.Request) -> str:
    return MSGPACK if MSGPACK in request.headers.get("Accept", "") else JSON


def reply(request: web.Request, obj: Any, status: int = 200) -> web.Response:
    fmt = _fmt(request)
    return web.Response(body=encode(obj, fmt), status=status, content_type=fmt)


def error(request: web.Request | None, status: int, message: str, **headers: str) -> web.Response:
    return web.Response(body=encode({"error": message}, JSON), status=status, content_type=JSON, headers=headers)


async def body(request: web.Request, typ: type) -> Any:
    ct = request.content_type
    if ct not in (JSON, MSGPACK):
        raise ProtocolError(f"Content-Type must be {JSON} or {MSGPACK}, got {ct or 'none'}", 415)
    limit = request.app["grid"].s.body_timeout  # seconds for a client to send its whole body (slow clients)
    try:
        async with asyncio.timeout(limit):
            raw = await request.read()
    except TimeoutError:
        raise ProtocolError(f"request body not received within {limit:g} s", 408) from None
    return parse(raw, typ, ct)


def parse(raw: bytes, typ: type, ct: str = MSGPACK) -> Any:
    """Decode and validate a body: 400 for a malformed one, 422 naming the field for an invalid one."""
    if not raw:
        raise ProtocolError("empty request body", 400)
    try:
        return decode(raw, typ, ct)
    except msgspec.ValidationError as e:
        raise ProtocolError(describe_error(e), 422) from None
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as e:
        raise ProtocolError(describe_error(e), 400) from None


def failure(grid: Grid, path: str, e: Exception) -> tuple[int, bytes, str, dict[str, str]]:
    """A handler's exception as (status, body, content type, headers): one mapping for HTTP and the stream."""
    if isinstance(e, Unavailable):  # Retry-After also in the body: a stream answer has no headers
        return (e.status, encode({"error": str(e), "retry_after": e.retry_after}, JSON), JSON,
                {"Retry-After": str(max(1, round(e.retry_after)))})
    if isinstance(e, ProtocolError):
        if e.status == 409 and path.startswith("/peer/"):  # fencing: the answer carries our ring
            return 409, encode(grid.mem.ring, MSGPACK), MSGPACK, {}
        return e.status, _error_body(str(e)), JSON, {}
    if isinstance(e, StorageError):
        log.error("storage_error", error=str(e), path=path)
        return 507, _error_body(f"the node cannot write its store: {e}"), JSON, {}
    if isinstance(e, web.HTTPException):
        return e.status, _error_body(e.reason), JSON, {}
    if isinstance(e, JobgridError):
        return 503, _error_body(str(e)), JSON, {}
    log.error("internal_error", path=path, exc_info=e)  # never a stack trace to the caller, never a dead node
    return 500, _error_body(f"internal error ({type(e).__name__}); see the node's log"), JSON, {}


def _error_body(message: str) -> bytes:
    return encode({"error": message}, JSON)


def make_middlewares(settings: NodeSettings) -> list:
    creds = Credentials.of(settings.token, settings.read_token, settings.peer_secret, settings.mtls)
    max_conns_per_client = settings.max_conns_per_client
    max_streams = settings.max_streams_per_client
    secure = settings.tls.enabled
    scheme = settings.scheme
    own_names = frozenset({settings.host.lower(), settings.advertised_host.lower()})
    in_flight: dict[str, int] = {}
    streams: dict[str, int] = {}

    @web.middleware
    async def per_client_cap(request: web.Request, handler: Handler) -> web.StreamResponse:
        """At most `max_conns_per_client` requests in flight per client IP; above that 429."""
        peer = request.remote or "?"
        if max_conns_per_client is None or request.path in PUBLIC or request.path == STREAM_PATH:
            return await handler(request)
        if in_flight.get(peer, 0) >= max_conns_per_client:
            return error(request, 429, f"too many concurrent requests from {peer} "
                         f"(limit {max_conns_per_client}); retry later", **{"Retry-After": "1"})
        in_flight[peer] = in_flight.get(peer, 0) + 1
        try:
            return await handler(request)
        finally:
            _release(in_flight, peer)

    @web.middleware
    async def causal(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bind the request's causal id (the caller's X-Jobgrid-Cause, else a new one) for its log lines."""
        cause = valid_cause(request.headers.get(CAUSE_HEADER)) or new_cause()
        with structlog.contextvars.bound_contextvars(cause=cause):
            return await handler(request)

    def unauthorized(request: web.Request, why: str | None = None) -> web.Response:
        return error(request, 401, why or "missing or wrong cluster token (Authorization: Bearer <token>)",
                     **{"WWW-Authenticate": "Bearer"})

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Who is calling (auth.identify), whether its role may use this route, and browser checks."""
        if request.path not in PUBLIC:
            if creds.open and not host_ok(request.headers.get("Host"), own_names):
                return error(request, 403, "Host header not accepted by an open node (DNS rebinding guard); "
                             "use the node's IP address or localhost")
            ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
            caller = identify(creds, authorization=request.headers.get("Authorization"),
                              cookie=request.cookies.get(SESSION_COOKIE), node_header=request.headers.get(NODE_HEADER),
                              peercert=ssl_obj.getpeercert() if ssl_obj is not None else None)
            url_token = request.query.get("token")
            if url_token is not None and request.method == "GET" and not creds.clients_open:
                # the dashboard link: a valid client token becomes a session cookie and a redirect without it
                given = raw(url_token)
                role = creds.match_token(given) if given is not None else None
                if role not in ("full", "read"):
                    return unauthorized(request, "the token in the URL is not a client token of this grid")
                resp = web.HTTPFound(request.rel_url.without_query_params("token"))
                token = creds.full if role == "full" else creds.read
                assert token is not None
                resp.set_cookie(SESSION_COOKIE, creds.session(token), httponly=True, samesite="Strict",
                                secure=secure, path="/")
                return resp
            if caller is None or isinstance(caller, str):
                return unauthorized(request, caller if isinstance(caller, str) else None)
            origin = request.headers.get("Origin")
            if (request.path == STREAM_PATH or caller.via == "cookie") and not origin_ok(
                    origin, scheme, request.headers.get("Host")):
                return error(request, 403, f"cross-origin request from {origin[:100] if origin else 'a page'} "
                             "refused: the dashboard is served to its own origin only")
            if caller.via == "cookie" and request.method not in ("GET", "HEAD") and origin is None:
                return error(request, 403, "a cookie-authenticated request must carry an Origin header")
            need = required_role(request.method, request.path)
            if not may(caller, need):
                return error(request, 403, refusal(caller, need, f"{request.method} {request.path}"))
            request["caller"] = caller
            if request.path == STREAM_PATH and caller.role != "peer" and max_streams is not None:
                ip = request.remote or "?"
                if streams.get(ip, 0) >= max_streams:
                    return error(request, 429, f"too many open streams from {ip} (limit {max_streams}); "
                                 "close one or retry later", **{"Retry-After": "1"})
                streams[ip] = streams.get(ip, 0) + 1
                try:
                    return await answer(request, handler)
                finally:
                    _release(streams, ip)
        return await answer(request, handler)

    async def answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status >= 400 and not e.text.startswith("{"):
                return error(request, e.status, e.reason)
            raise
        except Exception as e:  # noqa: BLE001 - mapped to a status by `failure`
            status, raw_body, ct, headers = failure(request.app["grid"], request.path, e)
            return web.Response(body=raw_body, status=status, content_type=ct, headers=headers)

    return [causal, per_client_cap, guard]


def _release(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 1) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def routes(grid: Grid, extra: dict[str, Any]) -> list[web.RouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        reason = grid.keeper.not_serving_reason()
        body = {"ok": reason is None, "node": grid.id, "member": grid.mem.is_member}
        if reason is not None:
            body["reason"] = reason
        return web.json_response(body, status=200 if reason is None else 503)

    async def leave(request: web.Request) -> web.Response:
        """POST /leave (full token or peer secret): leave the grid gracefully, then exit (docs/deploy.md)."""
        start = extra.get("leave")
        if start is None:
            raise Unavailable("this node cannot leave yet: it is still starting")
        start()
        return web.json_response({"leaving": True, "node": grid.id, "timeout": grid.s.timing.leave_timeout},
                                 status=202)

    async def servers(request: web.Request) -> web.Response:
        return reply(request, grid.keeper.server_list())

    async def submit(request: web.Request) -> web.Response:
        req: SubmitRequest = await body(request, SubmitRequest)
        resp = await submit_message(req)
        return reply(request, resp, 202 if resp.accepted else 200)

    async def submit_message(req: SubmitRequest) -> SubmitResponse:
        kinds, modules = grid.s.allow_kinds, grid.s.allow_modules
        horizon = time.time() + RUN_AT_HORIZON
        for spec in req.jobs:
            if spec.run_at is not None and spec.run_at > horizon:
                raise ProtocolError(f"job {spec.id}: run_at {spec.run_at:.0f} is more than "
                                    f"{RUN_AT_HORIZON / 86400 / 365:.0f} years ahead", 422)
            why = code_refusal(spec.kind, spec.target, kinds, modules)
            if why is not None:
                raise ProtocolError(f"job {spec.id}: {why}", 403)
        acc, ex = await grid.jobs.submit(req.jobs, retry=req.retry)
        done = await grid.waiters.within(acc, req.linger) if req.linger and acc else []
        return SubmitResponse(accepted=acc, existing=ex, node=grid.id, results=done)

    async def wait(request: web.Request) -> web.Response:
        return reply(request, await wait_message(await body(request, WaitRequest)))

    async def wait_message(req: WaitRequest) -> WaitResponse:
        res, unknown, undetermined = await grid.waiters.wait(req.ids, req.timeout)
        return WaitResponse(results=res, unknown=unknown, undetermined=undetermined)

    def _job_id(request: web.Request) -> str:
        raw = request.match_info["id"]
        try:
            return msgspec.json.decode(msgspec.json.encode(raw), type=JobId)
        except msgspec.ValidationError:
            raise ProtocolError(f"invalid job id {raw[:80]!r}: 1-128 chars of letters, digits, _ . : -", 400) from None

    async def job_status(request: web.Request) -> web.Response:
        jid = _job_id(request)
        found = await grid.search.locate(jid)
        if found is None:
            return error(request, 404, f"no server knows job {jid}")
        if isinstance(found, Verdict):
            return _not_known_yet(request, jid)
        return reply(request, job_view(found))

    async def job_result(request: web.Request) -> web.Response:
        jid = _job_id(request)
        found = await grid.search.locate(jid)
        if found is None:
            return error(request, 404, f"no server knows job {jid}")
        if isinstance(found, Verdict):
            return _not_known_yet(request, jid)
        if not isinstance(found, Result):
            return error(request, 404, f"job {jid} has no result yet", **{"Retry-After": "1"})
        return reply(request, found)

    async def list_jobs(request: web.Request) -> web.Response:
        state = request.query.get("state") or None
        if state not in (None, "waiting", "queued", "leased"):
            return error(request, 400, "state must be waiting, queued or leased (finished jobs: /results)")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return error(request, 400, "limit must be an integer")
        if not 1 <= limit <= 10_000:
            return error(request, 400, "limit must be 1-10000")
        rows = grid.store.list_jobs(None, state, limit)
        return reply(request, [_status(rec, st) for rec, st in rows])

    async def recent(request: web.Request) -> web.Response:
        return reply(request, grid.store.recent_results(100))

    async def cancel(request: web.Request) -> web.Response:
        req: CancelRequest = await body(request, CancelRequest)
        done = await grid.jobs.cancel(req.ids, forward="forwarded" not in request.query)
        return reply(request, {"cancelled": done})

    async def state(request: web.Request) -> web.Response:
        return reply(request, node_state(grid, extra))

    async def metrics(request: web.Request) -> web.Response:
        grid.counts.get()
        return web.Response(body=grid.metrics.render(), content_type="text/plain")

    # ---- peer endpoints: one table (PEER_MESSAGES), served as HTTP routes and over the peer stream ----
    def peer(typ: type, part: str, name: str) -> Handler:
        async def route(request: web.Request) -> web.Response:
            grid.metrics.peer_messages.labels("http").inc()
            msg = await body(request, typ)
            check_sender(grid, request.get("caller"), msg)
            answer = grid.handler(part, name)(msg)
            if inspect.isawaitable(answer):
                answer = await answer
            return reply(request, answer)
        return route

    async def p_ring_get(request: web.Request) -> web.Response:
        return reply(request, grid.mem.ring)

    async def p_recovery(request: web.Request) -> web.Response:
        return reply(request, grid.keeper.recovery_state())

    def bind(request: web.Request) -> StreamBinding:
        g: Grid = request.app["grid"]

        def answer_error(path: str, e: Exception) -> tuple[int, bytes]:
            status, raw, _, _ = failure(g, path, e)
            return status, raw
        caller: Caller | None = request.get("caller")

        def gate(path: str) -> None:
            need = FRAME_ROLES.get(path, "peer")
            if caller is not None and not may(caller, need):
                raise ProtocolError(refusal(caller, need, f"{path} on the stream"), 403)

        def as_peer(handle: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def checked(msg: Any) -> Any:
                check_sender(g, caller, msg)
                return handle(msg)
            return checked
        table = {path: (typ, as_peer(g.handler(part, name))) for path, (typ, part, name) in PEER_MESSAGES.items()}
        # clients' submissions and result waits too (the Python client sends them this way)
        table |= {"/jobs": (SubmitRequest, submit_message), "/results/wait": (WaitRequest, wait_message)}
        peer_counter = g.metrics.peer_messages.labels("stream")

        def counted(path: str) -> None:
            if path.startswith("/peer/"):
                peer_counter.inc()
        return StreamBinding(table, parse, answer_error, g.s.max_body, counted, g.s.max_conns_per_client, gate)

    streams = StreamServer(bind)
    extra["streams"] = streams  # the node closes them on shutdown

    return [
        web.get("/healthz", healthz), web.get("/servers", servers), web.post("/jobs", submit),
        web.post("/leave", leave),
        web.get("/jobs", list_jobs), web.get("/jobs/{id}", job_status), web.get("/jobs/{id}/result", job_result),
        web.post("/jobs/cancel", cancel), web.post("/results/wait", wait), web.get("/results", recent),
        web.get("/state", state), web.get("/metrics", metrics),
        web.get("/peer/ring", p_ring_get), web.get("/peer/recovery", p_recovery),
        web.get(STREAM_PATH, streams.route),
        *(web.post(path, peer(typ, part, name)) for path, (typ, part, name) in PEER_MESSAGES.items()),
    ]


def check_sender(grid: Grid, caller: Caller | None, msg: Any) -> None:
    """A peer message must name the node it comes from (and, under mutual TLS, one its certificate covers)."""
    named = message_sender(msg)
    if caller is None or named is None:
        return
    m = grid.mem.member(named)
    if m is None and isinstance(msg, JoinAnnounce):
        m = next((x for x in msg.ring.members if x.id == named), None)
    why = named_ok(caller, named, m.ip if m is not None else None)
    if why is not None:
        raise ProtocolError(why, 403)


def _status(rec, state: str) -> JobStatus:
    return JobStatus(id=rec.spec.id, state=state, owner=rec.owner, attempts=rec.attempts, kind=rec.spec.kind,
                     name=rec.spec.name, priority=rec.spec.priority, submitted_at=rec.submitted_at)


def _not_known_yet(request: web.Request, jid: str) -> web.Response:
    return error(request, 503, f"cannot tell yet whether job {jid} exists: a node that might hold it did not "
                 "answer (a failover is under way); retry", **{"Retry-After": "1"})


def job_view(found: Result | JobRecord) -> dict:
    """A job's status: its queue record, or its result without the value."""
    if isinstance(found, JobRecord):
        return msgspec.to_builtins(_status(found, found.state))
    d = msgspec.to_builtins(found)
    d.pop("value", None)
    d["id"] = found.job_id
    return d


def counts_view(c) -> dict[str, int]:  # noqa: ANN001 - counts.Counts
    return {"queued": c.queued, "leased": c.leased, "waiting": c.waiting, "active": c.active, "backup": c.backup}


def node_state(grid: Grid, extra: dict[str, Any]) -> dict:
    runner = extra.get("runner")
    return {
        "id": grid.id, "epoch": grid.mem.ring.epoch, "member": grid.mem.is_member,
        "quorum": grid.mem.has_quorum(time.monotonic()),
        "serving": (reason := grid.keeper.not_serving_reason()) is None, "reason": reason or "",
        "counts": counts_view(grid.counts.get()), "promotions": list(grid.ctx.promotions),
        "duplicates_dropped": grid.jobs.duplicates_dropped, "replicas": grid.mem.replicas,
        "runners": runner.snapshot() if runner else [],
        "started_jobs": runner.started_jobs if runner else 0,
        "returned_unstarted": runner.returned_unstarted if runner else 0,
        "events": list(grid.ctx.events)[-50:],
        "ring": msgspec.to_builtins(grid.mem.ring),
    }
