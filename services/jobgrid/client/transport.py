"""The client's transport: one request to the grid with failover, within the caller's time limit.

Addresses given first, then the grid's server list (learned from the nodes that answer and refreshed
when the client fails over); submissions and result waits over each node's stream (calls queued here
below the node's in-flight limit), everything else as HTTP requests; 502/503/504 and 429 honoured with
their Retry-After. `AsyncClient` (aio.py) sends everything through one.
"""

from __future__ import annotations

import asyncio
import os
import ssl as ssl_mod
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from ..codec import JSON, MSGPACK, decode, encode
from ..errors import ConfigError, GridUnavailable, JobNotFound, ProtocolError
from ..framing import STREAM_PATH, Link
from ..logs import CAUSE_HEADER
from ..protocol import ServerList

_STREAMED = frozenset({"/jobs", "/results/wait"})  # sent over the node's stream (see Transport._send)
_STREAM_SLOTS = 32  # calls in flight per stream; more wait here (a node refuses more than its limit with 429)
_STREAM_HEARTBEAT = 3.0  # s between pings on an idle stream: a frozen node is given up after half of it more
_FIRST_CONTACT = 2.0  # seconds to keep trying addresses that never answered before giving up
_REFRESH = 2.0  # s between two refreshes of the learned server list
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


def _normalise(address: str) -> str:
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


def token_from_env(token: str | None) -> str | None:
    if token:
        return token
    if os.environ.get("JOBGRID_TOKEN"):
        return os.environ["JOBGRID_TOKEN"]
    path = os.environ.get("JOBGRID_TOKEN_FILE")
    if path:
        return Path(path).read_text().strip()
    return None


class Transport:
    """Requests to a grid from a list of addresses, failing over between them."""

    def __init__(self, address: str | Sequence[str], *, token: str | None, ssl: ssl_mod.SSLContext | None,
                 timeout: float) -> None:
        addrs = [address] if isinstance(address, str) else list(address)
        if not addrs:
            raise ConfigError("give at least one node address")
        if not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._given = list(dict.fromkeys(_normalise(a) for a in addrs))
        self.addresses = list(self._given)  # the given ones first, then the grid's server list
        self.token = token_from_env(token)
        self.ssl = ssl
        self.timeout = timeout
        self._current = 0
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._refreshed_at = float("-inf")
        self._background: set[asyncio.Task] = set()
        self._reached = False  # some node answered once: from then on an outage is waited out (failover)
        self._links: dict[str, Link] = {}  # node base URL -> its stream
        self._slots: dict[str, asyncio.Semaphore] = {}  # node base URL -> room for calls on its stream
        self._streaming = True

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Accept": MSGPACK}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            self._session = aiohttp.ClientSession(headers=headers,
                                                  connector=aiohttp.TCPConnector(limit=64, ssl=self.ssl or None))
        return self._session

    async def call(self, method: str, path: str, body: Any, reply: type, *, timeout: float | None = None,
                    cause: str | None = None, poll: float = 0.0, again: Any = None) -> Any:
        """One request, failing over until `timeout` (the client's by default) runs out.

        A connection failure, a try that takes too long (a frozen node), 502/503/504 and 429 move on to
        the next address; once every address was tried, the next round waits for the longest Retry-After
        heard (or a growing back-off). `again` is the body to send on every attempt after the first (a
        resubmission must say so: the first attempt's outcome is unknown). `poll`: seconds the node may
        hold the answer (a long poll), added to each try's time limit.
        """
        total = self.timeout if timeout is None else timeout
        start = time.monotonic()
        end = start + total + poll
        try_for = max(2.0, total / 3) + poll
        data = encode(body, MSGPACK) if body is not None else None
        resend = encode(again, MSGPACK) if again is not None else data
        last: Exception | None = None
        tried, backoff, pause = 0, 0.05, 0.0
        while True:
            base = self.addresses[self._current % len(self.addresses)]
            left = end - time.monotonic()
            try:
                status, raw, ctype, retry_after = await self._send(base, method, path, data if tried == 0 else resend,
                                                                   cause, max(0.05, min(try_for, left)))
            except (aiohttp.ClientError, OSError, TimeoutError) as e:  # refused, reset, closed stream, timed out
                last = GridUnavailable(f"{base}: {type(e).__name__}: {e}")
                link = self._links.get(base)
                if link is not None and link.opened:
                    self._reached = True  # its stream opened: a node is there, only slow (a slow link, big jobs)
            else:
                self._reached = True
                if status == 401:
                    raise ProtocolError("the node refused the cluster token (401): set JOBGRID_TOKEN or pass token=",
                                        401)
                if status in _RETRY_STATUSES:
                    last = GridUnavailable(f"{base}: {_err(raw)}")
                    pause = max(pause, retry_after or 0.0)
                elif status == 404:
                    raise JobNotFound(_err(raw))
                elif status >= 400:
                    raise ProtocolError(f"{base}{path}: {_err(raw)}", status)
                else:
                    if self._refreshed_at == float("-inf"):
                        self._refresh_servers()  # learn the grid's server list once a node answers
                    return decode(raw, reply, ctype)
            now = time.monotonic()
            if not self._reached and now > start + min(_FIRST_CONTACT, total):
                raise GridUnavailable(f"no jobgrid server answered at {', '.join(self.addresses)}: is one "
                                      f"running there? (last error: {last})") from None
            if now >= end:
                raise last
            self._rotate()
            self._refresh_servers()
            tried += 1
            if tried % len(self.addresses) == 0:  # every address tried: wait before the next round
                await asyncio.sleep(max(0.0, min(max(backoff, pause), end - now)))
                backoff, pause = min(1.0, backoff * 2), 0.0

    async def _send(self, base: str, method: str, path: str, data: bytes | None, cause: str | None,
                    timeout: float) -> tuple[int, bytes, str, float | None]:
        """(status, body, content type, Retry-After) of one request: submissions and result waits over
        the node's stream (one WebSocket, opened once), everything else as an HTTP request."""
        if self._streaming and method == "POST" and path in _STREAMED and data is not None:
            link = self._links.get(base)
            if link is None:
                link = self._links[base] = Link(self._sess(), base + STREAM_PATH, heartbeat=_STREAM_HEARTBEAT)
            slots = self._slots.setdefault(base, asyncio.Semaphore(_STREAM_SLOTS))
            try:
                async with asyncio.timeout(timeout):
                    async with slots:  # never more calls on one stream than a node takes: the rest queue here
                        status, raw = await link.call(path, data, cause)
                return status, raw, MSGPACK if status < 400 else JSON, _retry_after(raw) if status >= 400 else None
            except aiohttp.WSServerHandshakeError as e:
                if e.status == 401:
                    return 401, b"", JSON, None
                if e.status != 404:
                    raise aiohttp.ClientConnectionError(f"stream refused: {e.status} {e.message}") from None
                self._streaming = False  # a node without the stream: plain requests from now on
        headers = {"Content-Type": MSGPACK} if data else {}
        if cause:
            headers[CAUSE_HEADER] = cause
        async with self._sess().request(method, base + path, data=data, headers=headers or None,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            raw = await r.read()
            after = _retry_after(raw, r.headers.get("Retry-After")) if r.status >= 400 else None
            return r.status, raw, MSGPACK if r.content_type == MSGPACK else JSON, after

    async def close(self) -> None:
        """Stop learning the server list, close the streams and the HTTP session."""
        self._closed = True
        tasks = list(self._background)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self._links.values():
            await link.close()
        self._links.clear()
        if self._session is not None:
            await self._session.close()

    def _rotate(self) -> None:
        self._current = (self._current + 1) % len(self.addresses)

    def _refresh_servers(self) -> None:
        """Learn the grid's current server list in the background (at most every `_REFRESH` seconds), so
        nodes added later are failover targets and removed ones stop being tried first."""
        now = time.monotonic()
        if now - self._refreshed_at < _REFRESH or self._closed:
            return
        self._refreshed_at = now
        t = asyncio.ensure_future(self._learn_servers())
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _learn_servers(self) -> None:
        order = self.addresses[self._current:] + self.addresses[:self._current]
        for base in order:
            try:
                async with self._sess().get(base + "/servers", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status != 200:
                        continue
                    sl = decode(await r.read(), ServerList, r.content_type if r.content_type == MSGPACK else
                                "application/json")
            except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError, msgspec.ValidationError):
                continue
            scheme = base.split("://")[0]
            learned = [f"{scheme}://{_host(s.ip)}:{s.port}" for s in sl.servers if s.status != "dead"]
            current = self.addresses[self._current % len(self.addresses)]
            self.addresses = self._given + [a for a in dict.fromkeys(learned) if a not in self._given]
            self._current = self.addresses.index(current) if current in self.addresses else 0
            return


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip


def _retry_after(raw: bytes, header: str | None = None) -> float | None:
    """Seconds to wait before asking again: the Retry-After header, else `retry_after` in the error body."""
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            return None
    try:
        value = msgspec.json.decode(raw).get("retry_after")
        return max(0.0, float(value)) if value is not None else None
    except Exception:  # noqa: BLE001 - an error body without it
        return None


def _err(raw: bytes) -> str:
    try:
        return str(msgspec.json.decode(raw).get("error", raw[:200]))
    except Exception:  # noqa: BLE001
        try:
            return str(msgspec.msgpack.decode(raw))[:300]
        except Exception:  # noqa: BLE001
            return raw[:200].decode(errors="replace")
