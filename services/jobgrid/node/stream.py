"""Messages over one long-lived WebSocket per pair of processes (`GET /stream`).

An HTTP request per message costs both sides a full request parse and a response (about 0.27 ms of
round trip here); a frame on an open WebSocket costs about 0.1 ms. The stream carries the POST
`/peer/*` messages between nodes, and the client's `/jobs` and `/results/wait`, with the same bodies,
the same handlers and the same answers (status + body, so a 409 still carries the ring). It is opened
with an ordinary `GET /stream` that passes the same token check (and TLS) as every other route.

Frames are msgpack arrays:

    call   [id, path, cause, body]      body: the message, msgpack-encoded as in the HTTP request
    answer [id, status, body]           body: msgpack on 200, the HTTP error body otherwise

Calls are answered in any order (a report waits for its group commit while heartbeats go by).
Closing the connection fails the calls waiting on it at once, so a killed peer is seen without a
timeout; a timed-out call leaves the connection open (its late answer is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
import msgspec
import structlog
from aiohttp import web

from ..logs import new_cause, valid_cause

STREAM_PATH = "/stream"

_enc = msgspec.msgpack.Encoder()
_call_dec = msgspec.msgpack.Decoder(tuple[int, str, str | None, bytes])
_answer_dec = msgspec.msgpack.Decoder(tuple[int, int, bytes])

# (message type, handler of the decoded message) per peer path
PeerTable = dict[str, tuple[type, Callable[[Any], Any]]]
# (status, body) for a failed handler
ErrorAnswer = Callable[[str, Exception], tuple[int, bytes]]
# decode a message body (raises ProtocolError 400/422 naming the field)
Parse = Callable[[bytes, type], Any]

log = structlog.get_logger("jobgrid.stream")


class StreamClosed(ConnectionError):
    """The stream closed while a call was waiting for its answer."""


class StreamBinding(NamedTuple):
    """What a stream answers with, bound to the node when a peer or client connects."""

    table: PeerTable
    parse: Parse
    error_answer: ErrorAnswer
    max_msg: int
    counted: Callable[[str], None]  # sees the path of every call
    max_in_flight: int | None  # calls still being answered per stream (above: 429), like the per-client cap
    gate: Callable[[str], None] = lambda path: None  # raises if the caller may not send `path` (before decoding)


class StreamServer:
    """The `GET /stream` handler (`route`): answers every call frame with the handler the table names.

    `close()` ends the open streams (on shutdown: an open WebSocket would otherwise hold the server's
    cleanup for its whole shutdown timeout).
    """

    def __init__(self, bind: Callable[[web.Request], StreamBinding]) -> None:
        self.open: set[web.WebSocketResponse] = set()
        self.route = _route(self.open, bind)

    async def close(self) -> None:
        for ws in list(self.open):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"node stopping")


def _route(open_: set[web.WebSocketResponse],
           bind: Callable[[web.Request], StreamBinding]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:

    async def answer(ws: web.WebSocketResponse, mid: int, path: str, pending: Awaitable[Any],
                     error_answer: ErrorAnswer) -> None:
        try:
            out = (mid, 200, _enc.encode(await pending))
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer, as over HTTP
            out = (mid, *error_answer(path, e))
        if not ws.closed:
            with contextlib.suppress(ConnectionError):  # the caller went away meanwhile
                await ws.send_bytes(_enc.encode(out))

    async def route(request: web.Request) -> web.StreamResponse:
        table, parse, error_answer, max_msg, counted, max_in_flight, gate = bind(request)
        ws = web.WebSocketResponse(compress=False, max_msg_size=max_msg, autoping=True)
        await ws.prepare(request)
        tasks: set[asyncio.Task] = set()
        open_.add(ws)
        try:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    await ws.close(code=aiohttp.WSCloseCode.UNSUPPORTED_DATA, message=b"binary msgpack frames only")
                    break
                try:
                    mid, path, cause, body = _call_dec.decode(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    await ws.close(code=aiohttp.WSCloseCode.UNSUPPORTED_DATA, message=b"malformed call frame")
                    break
                counted(path)
                with structlog.contextvars.bound_contextvars(cause=valid_cause(cause) or new_cause()):
                    entry = table.get(path)
                    try:
                        if entry is None:
                            raise web.HTTPNotFound(reason=f"no message {path[:100]!r} on the stream")
                        typ, handle = entry
                        gate(path)
                        if max_in_flight is not None and len(tasks) >= max_in_flight:
                            raise web.HTTPTooManyRequests(
                                reason=f"too many calls in flight on this stream (limit {max_in_flight}); retry later")
                        result = handle(parse(body, typ))
                        if inspect.isawaitable(result):  # e.g. a report waiting for its group commit
                            t = asyncio.ensure_future(answer(ws, mid, path, result, error_answer))
                            tasks.add(t)
                            t.add_done_callback(tasks.discard)
                            continue
                        out = (mid, 200, _enc.encode(result))
                    except Exception as e:  # noqa: BLE001 - answered like the HTTP route would
                        out = (mid, *error_answer(path, e))
                try:
                    await ws.send_bytes(_enc.encode(out))
                except ConnectionError:  # the caller went away
                    break
        finally:
            open_.discard(ws)
            for t in tasks:  # the caller is gone: as with HTTP handler cancellation
                t.cancel()
        return ws

    return route


class _Conn:
    __slots__ = ("ws", "pending", "reader")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.reader: asyncio.Task | None = None


class Link:
    """The calling side of one peer's stream; (re)connects on demand."""

    def __init__(self, session: aiohttp.ClientSession, url: str = STREAM_PATH,
                 headers: dict[str, str] | None = None, *, heartbeat: float | None = None) -> None:
        """`heartbeat`: ping an idle stream this often and close it when no pong comes within half of it
        (a frozen peer then fails its calls at once instead of at their timeouts)."""
        self._session = session
        self._url = url
        self.headers = dict(headers or {})  # sent with the upgrade (a peer names its node here)
        self._heartbeat = heartbeat
        self._conn: _Conn | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)

    async def _open(self) -> _Conn:
        c = self._conn
        if c is not None and not c.ws.closed:
            return c
        async with self._lock:
            c = self._conn
            if c is not None and not c.ws.closed:
                return c
            ws = await self._session.ws_connect(self._url, compress=0, max_msg_size=0, autoping=True,
                                                headers=self.headers or None, heartbeat=self._heartbeat)
            c = _Conn(ws)
            c.reader = asyncio.ensure_future(self._read(c))
            self._conn = c
            return c

    async def _read(self, c: _Conn) -> None:
        try:
            async for msg in c.ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    break
                mid, status, body = _answer_dec.decode(msg.data)
                fut = c.pending.pop(mid, None)
                if fut is not None and not fut.done():
                    fut.set_result((status, body))
        except (msgspec.DecodeError, msgspec.ValidationError, aiohttp.ClientError, OSError) as e:
            log.warning("peer_stream_broken", error=f"{type(e).__name__}: {e}")
        finally:
            if self._conn is c:
                self._conn = None
            if not c.ws.closed:
                await c.ws.close()
            for fut in c.pending.values():
                if not fut.done():
                    fut.set_exception(StreamClosed("peer stream closed"))
            c.pending.clear()

    async def call(self, path: str, body: bytes, cause: str | None) -> tuple[int, bytes]:
        """Send one message; its (status, body) answer. The caller bounds it with a timeout."""
        c = await self._open()
        mid = next(self._ids)
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        c.pending[mid] = fut
        try:
            await c.ws.send_bytes(_enc.encode((mid, path, cause, body)))
            return await fut
        finally:
            c.pending.pop(mid, None)

    async def close(self) -> None:
        c, self._conn = self._conn, None
        if c is not None:
            await c.ws.close()
            if c.reader is not None:
                await asyncio.gather(c.reader, return_exceptions=True)
