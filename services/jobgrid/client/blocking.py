"""`Client`: the blocking client, an `AsyncClient` on a private event-loop thread, and `JobFuture`, the
`concurrent.futures.Future` of one job (so `wait`, `as_completed` and executors work with grid jobs).

`submit` returns at once: the submission joins the client's next group commit on the loop thread, so a
loop of `submit` calls costs no round trip each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import ssl as ssl_mod
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import JobCancelled, JobTimeout
from ..protocol import JobSpec, Result, ServerList
from .aio import AsyncClient
from .specs import pickle_spec


class JobFuture(concurrent.futures.Future):
    """A `concurrent.futures.Future` for one grid job; `cancel()` also cancels it on the grid."""

    def __init__(self, client: Client, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self._client = client

    def cancel(self) -> bool:
        if self.done():
            return False
        try:
            cancelled = self.job_id in self._client.cancel(self.job_id)
        except Exception:  # noqa: BLE001 - the grid is unreachable: cannot promise a cancel
            return False
        if not cancelled:
            return False
        return _mark_cancelled(self)


def _mark_cancelled(f: concurrent.futures.Future) -> bool:
    """Cancel `f` and wake wait()/as_completed() waiters, once, from whichever thread gets here first."""
    if not concurrent.futures.Future.cancel(f):
        return False
    try:
        f.set_running_or_notify_cancel()
    except RuntimeError:
        pass  # the other thread notified already
    return True


class Client:
    """Blocking client; runs an `AsyncClient` on a private event-loop thread."""

    def __init__(self, address: str | Sequence[str] = "http://127.0.0.1:8000", *, token: str | None = None,
                 ssl: ssl_mod.SSLContext | None = None, timeout: float = 30.0) -> None:
        try:
            import uvloop  # noqa: PLC0415 - optional speed-up, as in the node
            self._loop = uvloop.new_event_loop()
        except ImportError:
            self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="jobgrid-client", daemon=True)
        self._thread.start()
        self._aio: AsyncClient = self._run(self._make(address, token, ssl, timeout))
        self._closed = False

    async def _make(self, address, token, ssl, timeout) -> AsyncClient:
        return AsyncClient(address, token=token, ssl=ssl, timeout=timeout)

    def _run(self, coro, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _link(self, afut: asyncio.Future, cf: JobFuture | None = None) -> JobFuture:
        cf = cf or JobFuture(self, afut.job_id)  # type: ignore[attr-defined]

        def done(f: asyncio.Future) -> None:
            exc = None if f.cancelled() else f.exception()  # retrieved even if cf is done already
            if cf.done():
                return
            if f.cancelled() or isinstance(exc, JobCancelled):
                _mark_cancelled(cf)  # cancelled on the grid: cf.cancelled() is True
            elif f.exception() is not None:
                cf.set_exception(f.exception())
            else:
                cf.set_result(f.result())

        self._loop.call_soon_threadsafe(afut.add_done_callback, done)
        return cf

    def _submit_detached(self, spec: JobSpec) -> JobFuture:
        """Return at once; the submission joins the client's next group commit (no round trip per call)."""
        cf = JobFuture(self, spec.id)
        self._loop.call_soon_threadsafe(lambda: self._link(self._aio.submit_detached(spec), cf))
        return cf

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> JobFuture:
        return self._submit_detached(pickle_spec(fn, args, kwargs))

    def submit_job(self, fn: Callable, args: Sequence = (), kwargs: dict | None = None, **opts: Any) -> JobFuture:
        return self._submit_detached(pickle_spec(fn, args, kwargs or {}, **opts))

    def submit_script(self, path_or_source: str | os.PathLike, argv: Sequence[str] = (), **opts: Any) -> JobFuture:
        return self._link(self._run(self._aio.submit_script(path_or_source, argv, **opts)))

    def submit_call(self, target: str, *args: Any, _opts: dict | None = None, **kwargs: Any) -> JobFuture:
        return self._link(self._run(self._aio.submit_call(target, *args, _opts=_opts, **kwargs)))

    def submit_many(self, specs: Sequence[JobSpec]) -> list[JobFuture]:
        return [self._link(f) for f in self._run(self._aio.submit_many(specs))]

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None, **opts: Any) -> list[Any]:
        futs = self.submit_many([pickle_spec(fn, args, {}, **opts) for args in zip(*iterables)])
        end = None if timeout is None else time.monotonic() + timeout
        out = []
        for f in futs:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                out.append(f.result(left))
            except concurrent.futures.TimeoutError:
                raise JobTimeout(f"map did not finish within {timeout} s") from None
        return out

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        return self._run(self._aio.result(job_id, timeout))

    def wait_result(self, job_id: str, timeout: float | None = None) -> Result:
        return self._run(self._aio.wait_result(job_id, timeout))

    def status(self, job_id: str) -> dict:
        return self._run(self._aio.status(job_id))

    def servers(self) -> ServerList:
        return self._run(self._aio.servers())

    def jobs(self, state: str | None = None, limit: int = 100) -> list[dict]:
        return self._run(self._aio.jobs(state, limit))

    def cancel(self, *job_ids: str) -> list[str]:
        return self._run(self._aio.cancel(*job_ids))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._aio.close(), timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
