"""`GridExecutor`: a `concurrent.futures.Executor` over the grid, so ProcessPoolExecutor code runs unchanged."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .client import Client, JobFuture, pickle_spec


class GridExecutor(concurrent.futures.Executor):
    def __init__(self, address: str | Sequence[str] = "http://127.0.0.1:8000", *, token: str | None = None,
                 client: Client | None = None, **job_options: Any) -> None:
        self._own = client is None
        self._client = client or Client(address, token=token)
        self._opts = job_options
        self._futures: set[JobFuture] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> JobFuture:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut = self._client.submit_job(fn, args, kwargs, **self._opts)
            self._futures.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: concurrent.futures.Future) -> None:
        with self._lock:
            self._futures.discard(fut)  # type: ignore[arg-type]

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1
            ) -> Iterator[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            specs = [pickle_spec(fn, args, {}, **self._opts) for args in zip(*iterables)]
            futs = self._client.submit_many(specs)
            self._futures.update(futs)
        for f in futs:
            f.add_done_callback(self._forget)
        return _results(futs, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for f in pending:
                f.cancel()
        if wait:
            concurrent.futures.wait(pending)
        if self._own:
            self._client.close()


def _results(futs: list[JobFuture], timeout: float | None) -> Iterator[Any]:
    """map's results in order. A future is popped and read in one expression, so the iterator keeps no
    reference to a result it has yielded (CPython's `test_free_reference`)."""
    end = None if timeout is None else time.monotonic() + timeout
    try:
        futs.reverse()
        while futs:
            yield _result(futs.pop(), end)
    finally:
        for f in futs:
            f.cancel()


def _result(fut: JobFuture, end: float | None) -> Any:
    return fut.result() if end is None else fut.result(end - time.monotonic())
