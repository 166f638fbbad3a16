"""Group commit: callers that arrive while a batch is being written share the next one."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """`await submit(items)` returns this caller's share of `flush(groups)`'s answer.

    One flush runs at a time; every caller that arrives meanwhile joins the next flush, so
    under load one transaction and one replication round trip serve many requests.
    """

    def __init__(self, flush: Callable[[list[list[T]]], Awaitable[list[R]]], max_items: int = 20_000) -> None:
        self._flush = flush
        self._pending: list[tuple[list[T], asyncio.Future[R], contextvars.Context]] = []
        # the callers' contexts for the groups of the flush running now (their causal ids, for logging)
        self.contexts: list[contextvars.Context] = []
        self._task: asyncio.Task | None = None
        self._max = max_items

    async def submit(self, items: list[T]) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((items, fut, contextvars.copy_context()))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._pending:
            batch, n = [], 0
            while self._pending and (n == 0 or n + len(self._pending[0][0]) <= self._max):
                items, fut, ctx = self._pending.pop(0)
                batch.append((items, fut))
                self.contexts.append(ctx)
                n += len(items)
            try:
                outs = await self._flush([items for items, _ in batch])
            except BaseException as e:  # every waiter learns of the failure
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
                if not isinstance(e, Exception):
                    raise
                continue
            finally:
                self.contexts = []
            for (_, fut), out in zip(batch, outs):
                if not fut.done():
                    fut.set_result(out)
