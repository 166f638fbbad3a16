"""Messages over one long-lived WebSocket per pair of processes (`GET /stream`): the frames, and `Link`,
the calling side that nodes (to their peers) and the client (to a node) both use.

An HTTP request per message costs both sides a full request parse and a response (about 0.27 ms of
round trip here); a frame on an open WebSocket costs about 0.1 ms. The stream carries the POST
`/peer/*` messages between nodes, and the client's `/jobs` and `/results/wait`, with the same bodies,
the same handlers and the same answers (status + body, so a 409 still carries the ring). It is opened
with an ordinary `GET /stream` that passes the same token check (and TLS) as every other route; the
answering side is the node's `node/stream.py`.

Frames are msgpack arrays:

    call   [id, path, cause, body]      body: the message, msgpack-encoded as in the HTTP request
    answer [id, status, body]           body: msgpack on 200, the HTTP error body otherwise

Calls are answered in any order (a report waits for its group commit while heartbeats go by).
Closing the connection fails the calls waiting on it at once, so a killed peer is seen without a
timeout; a timed-out call leaves the connection open (its late answer is dropped).
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import msgspec
import structlog

STREAM_PATH = "/stream"

_enc = msgspec.msgpack.Encoder()
_call_dec = msgspec.msgpack.Decoder(tuple[int, str, str | None, bytes])
_answer_dec = msgspec.msgpack.Decoder(tuple[int, int, bytes])
# what decoding a malformed frame raises
FrameError = (msgspec.DecodeError, msgspec.ValidationError)

log = structlog.get_logger("jobgrid.stream")


def encode_call(mid: int, path: str, cause: str | None, body: bytes) -> bytes:
    return _enc.encode((mid, path, cause, body))


def decode_call(data: bytes) -> tuple[int, str, str | None, bytes]:
    """(id, path, cause, body) of a call frame; raises one of `FrameError` if it is not one."""
    return _call_dec.decode(data)


def encode_answer(mid: int, status: int, body: bytes) -> bytes:
    return _enc.encode((mid, status, body))


def decode_answer(data: bytes) -> tuple[int, int, bytes]:
    """(id, status, body) of an answer frame; raises one of `FrameError` if it is not one."""
    return _answer_dec.decode(data)


def encode_body(message: object) -> bytes:
    """A message as a frame's msgpack body."""
    return _enc.encode(message)


class StreamClosed(ConnectionError):
    """The stream closed while a call was waiting for its answer."""


class _Conn:
    __slots__ = ("ws", "pending", "reader")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.reader: asyncio.Task | None = None


class Link:
    """The calling side of one stream (a node's to a peer, a client's to a node); (re)connects on demand."""

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
        self.opened = False  # a handshake ever succeeded: a jobgrid node is there, however slow its answers

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
            self.opened = True
            c = _Conn(ws)
            c.reader = asyncio.ensure_future(self._read(c))
            self._conn = c
            return c

    async def _read(self, c: _Conn) -> None:
        try:
            async for msg in c.ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    break
                mid, status, body = decode_answer(msg.data)
                fut = c.pending.pop(mid, None)
                if fut is not None and not fut.done():
                    fut.set_result((status, body))
        except (*FrameError, aiohttp.ClientError, OSError) as e:
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
            await c.ws.send_bytes(encode_call(mid, path, cause, body))
            return await fut
        finally:
            c.pending.pop(mid, None)

    async def close(self) -> None:
        c, self._conn = self._conn, None
        if c is not None:
            await c.ws.close()
            if c.reader is not None:
                await asyncio.gather(c.reader, return_exceptions=True)
