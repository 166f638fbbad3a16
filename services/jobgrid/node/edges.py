"""The listener's edges: connections that never finish their headers, and credentials in aiohttp's logs.

aiohttp has no limit on connections that have not sent a complete request head (slowloris) and logs a
malformed request's raw head line when it cannot parse it. `GuardedRunner` caps connections per client
address until their first request's headers are in and closes those that take longer than
`header_timeout`; `redact_server_logs` keeps every request line and header out of the server's log.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("jobgrid.edges")


class GuardedServer(web.Server):
    """`web.Server` that counts, per client address, connections whose first request head is not in yet."""

    def __init__(self, *args: Any, max_pending: int | None, header_timeout: float, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.max_pending = max_pending
        self.header_timeout = header_timeout
        self.pending: dict[str, int] = defaultdict(int)
        self._waiting: dict[RequestHandler, tuple[str, asyncio.TimerHandle]] = {}
        inner = self.request_factory

        def request_factory(message, payload, protocol, writer, task):  # noqa: ANN001 - aiohttp's signature
            self._headers_in(protocol)
            return inner(message, payload, protocol, writer, task)
        self.request_factory = request_factory

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        if self.max_pending is not None and self.pending[ip] >= self.max_pending:
            transport.abort()  # over the cap: not even a response (it could not have sent a request yet)
            return
        self.pending[ip] += 1
        timer = self._loop.call_later(self.header_timeout, self._expire, handler, transport)
        self._waiting[handler] = (ip, timer)

    def _expire(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if handler in self._waiting:
            self._headers_in(handler)
            transport.abort()

    def _headers_in(self, handler: RequestHandler) -> None:
        entry = self._waiting.pop(handler, None)
        if entry is None:
            return
        ip, timer = entry
        timer.cancel()
        left = self.pending[ip] - 1
        if left > 0:
            self.pending[ip] = left
        else:
            self.pending.pop(ip, None)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._headers_in(handler)
        super().connection_lost(handler, exc)


class GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, *, max_pending: int | None, header_timeout: float, **kw: Any) -> None:
        super().__init__(app, **kw)
        self._guard = dict(max_pending=max_pending, header_timeout=header_timeout)

    async def _make_server(self) -> web.Server:
        s = await super()._make_server()
        return GuardedServer(s.request_handler, request_factory=s.request_factory,
                             handler_cancellation=s.handler_cancellation, loop=s._loop, **self._guard, **s._kwargs)


class _Redact(logging.Filter):
    """aiohttp's 'Error handling request' lines carry the unparsed head (request line, headers) in the
    exception: keep the line, drop the exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):  # a parse error: its text quotes the raw head
            record.msg = f"{record.getMessage()}: {type(exc).__name__} (request head not logged)"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def redact_server_logs() -> None:
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.websocket"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _Redact) for f in lg.filters):
            lg.addFilter(_Redact())
