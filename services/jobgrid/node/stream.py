"""The answering side of the stream (`GET /stream`): every call frame is answered by the handler the
HTTP route of the same path uses, so validation, fencing and errors are identical.

The frames and the calling side (`Link`, used by nodes and clients alike) are in `jobgrid.framing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
import structlog
from aiohttp import web

from ..framing import STREAM_PATH, FrameError, decode_call, encode_answer, encode_body
from ..logs import new_cause, valid_cause

__all__ = ["STREAM_PATH", "ErrorAnswer", "Parse", "PeerTable", "StreamBinding", "StreamServer"]

# (message type, handler of the decoded message) per peer path
PeerTable = dict[str, tuple[type, Callable[[Any], Any]]]
# (status, body) for a failed handler
ErrorAnswer = Callable[[str, Exception], tuple[int, bytes]]
# decode a message body (raises ProtocolError 400/422 naming the field)
Parse = Callable[[bytes, type], Any]


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

    async def close(self, timeout: float = 1.0) -> None:
        """Close every open stream at once; a frozen peer that never answers the close costs `timeout`, not
        aiohttp's 10 s each, one after the other."""
        await asyncio.gather(*(asyncio.wait_for(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"node stopping"),
                                                timeout) for ws in list(self.open)), return_exceptions=True)


def _route(open_: set[web.WebSocketResponse],
           bind: Callable[[web.Request], StreamBinding]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:

    async def answer(ws: web.WebSocketResponse, mid: int, path: str, pending: Awaitable[Any],
                     error_answer: ErrorAnswer) -> None:
        try:
            out = (mid, 200, encode_body(await pending))
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer, as over HTTP
            out = (mid, *error_answer(path, e))
        if not ws.closed:
            with contextlib.suppress(ConnectionError):  # the caller went away meanwhile
                await ws.send_bytes(encode_answer(*out))

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
                    mid, path, cause, body = decode_call(msg.data)
                except FrameError:
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
                        out = (mid, 200, encode_body(result))
                    except Exception as e:  # noqa: BLE001 - answered like the HTTP route would
                        out = (mid, *error_answer(path, e))
                try:
                    await ws.send_bytes(encode_answer(*out))
                except ConnectionError:  # the caller went away
                    break
        finally:
            open_.discard(ws)
            for t in tasks:  # the caller is gone: as with HTTP handler cancellation
                t.cancel()
        return ws

    return route
