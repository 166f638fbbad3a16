"""Calls to other nodes: one aiohttp session and one stream per peer, msgpack bodies, a named timeout per
kind of message (`settings.PeerTimeouts`), and every answer mapped to the exception tree in one place
(`_answer`): unreachable or timed out -> PeerError; refused (4xx) -> PeerRefused; fenced (409, carrying
the peer's ring) -> PeerFenced; busy (429/503) -> PeerBusy; a reply that does not decode -> ProtocolError."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import aiohttp

import msgspec

from ..codec import MSGPACK, decode, encode
from ..errors import GridUnavailable, ProtocolError
from ..logs import CAUSE_HEADER, current_cause
from ..protocol import RingState
from ..settings import PeerTimeouts
from .auth import NODE_HEADER
from ..framing import Link

T = TypeVar("T")


class PeerError(GridUnavailable):
    """A peer could not be reached, or answered with an error."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class PeerRefused(PeerError):
    """The peer answered and refused this message (4xx): sending it again as it is will not help."""


class PeerFenced(PeerRefused):
    """409: the peer follows a newer ring (or does not count us in its own); its ring comes along."""

    def __init__(self, message: str, status: int, body: bytes) -> None:
        super().__init__(message, status, body)
        try:
            self.ring: RingState | None = msgspec.msgpack.decode(body, type=RingState)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.ring = None


class PeerBusy(PeerError):
    """429 or 503: the peer cannot take it now (no quorum, stopping, full); try again later."""


class Peers:
    def __init__(self, *, token: str | None, scheme: str = "http", ssl_context: ssl.SSLContext | None = None,
                 timeouts: PeerTimeouts | None = None, local_host: str | None = None, stream: bool = True,
                 dial: dict[tuple[str, int], tuple[str, int]] | None = None) -> None:
        self.token = token
        self.scheme = scheme
        self.ssl = ssl_context
        self.timeouts = timeouts or PeerTimeouts()
        # bind outgoing connections to our own address, so links between nodes on 127.0.0.x can be cut
        self.local_addr = (local_host, 0) if local_host else None
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        # POST /peer/* messages go over one WebSocket per peer (framing.Link) unless `stream` is off
        self.stream = stream
        self._links: dict[str, Link] = {}
        self._closed = False
        self.dial = dict(dial or {})  # a peer's advertised address -> the address to dial (--dial)
        self.identity: Callable[[], str] | None = None  # this node's id, named in every call

    def _node_header(self) -> dict[str, str]:
        return {NODE_HEADER: self.identity()} if self.identity is not None else {}

    def _session(self, base: str) -> aiohttp.ClientSession:
        s = self._sessions.get(base)
        if s is None or s.closed:
            headers = {"Accept": MSGPACK, "Content-Type": MSGPACK}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            conn = aiohttp.TCPConnector(limit=32, ssl=self.ssl if self.ssl else None, keepalive_timeout=30,
                                        local_addr=self.local_addr)
            s = aiohttp.ClientSession(base_url=base, headers=headers, connector=conn)
            self._sessions[base] = s
        return s

    def base(self, host: str, port: int) -> str:
        host, port = self.dial.get((host, port), (host, port))
        h = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{h}:{port}"

    async def call(self, host: str, port: int, path: str, body: Any, reply: type[T], *,
                   timeout: float | None = None, method: str = "POST") -> T:
        if self._closed:
            raise PeerError("node is stopping")
        base = self.base(host, port)
        s = self._session(base)
        timeout = timeout or self.timeouts.for_path(path, method)
        data = encode(body, MSGPACK) if body is not None else None
        cause = current_cause()  # the message carries its causal id onward
        if self.stream and method == "POST" and data is not None and path.startswith("/peer/"):
            link = self._links.get(base)
            me = self._node_header()
            if link is not None and link.headers != me:  # we rejoined under a new id: a new stream names it
                await link.close()
                link = None
            if link is None:
                link = self._links[base] = Link(s, headers=me)
            try:
                async with asyncio.timeout(timeout):
                    status, raw = await link.call(path, data, cause)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                raise PeerError(f"{host}:{port}{path}: {type(e).__name__}: {e}") from None
            return self._answer(host, port, path, status, raw, reply)
        try:
            headers = {**self._node_header(), **({CAUSE_HEADER: cause} if cause else {})}
            async with s.request(method, path, data=data, headers=headers,
                                 timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise PeerError(f"{host}:{port}{path}: {type(e).__name__}: {e}") from None
        return self._answer(host, port, path, status, raw, reply)

    @staticmethod
    def _answer(host: str, port: int, path: str, status: int, raw: bytes, reply: type[T]) -> T:
        if status >= 400:
            what = f"{host}:{port}{path} answered {status}"
            if status == 409:
                raise PeerFenced(what, status, raw)
            if status in (429, 503):
                raise PeerBusy(f"{what}: {raw[:300]!r}", status, raw)
            if status < 500:
                raise PeerRefused(f"{what}: {raw[:300]!r}", status, raw)
            raise PeerError(f"{what}: {raw[:300]!r}", status, raw)
        try:
            return decode(raw, reply, MSGPACK)
        except Exception as e:  # a peer of another version or a liar
            raise ProtocolError(f"{host}:{port}{path}: bad reply: {e}", 502) from None

    async def forget(self, host: str, port: int) -> None:
        link = self._links.pop(self.base(host, port), None)
        if link is not None:
            await link.close()
        s = self._sessions.pop(self.base(host, port), None)
        if s is not None:
            await s.close()

    async def close(self) -> None:
        self._closed = True
        # all at once, each bounded: a frozen peer never answers the WebSocket close
        await asyncio.gather(*(asyncio.wait_for(link.close(), 1.0) for link in list(self._links.values())),
                             return_exceptions=True)
        self._links.clear()
        for s in list(self._sessions.values()):
            await s.close()
        self._sessions.clear()
