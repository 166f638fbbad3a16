"""Waiting for results: every wait of one client (the futures of submitted jobs, `wait_result` calls)
shares one long poll at a time (`POST /results/wait`), and a result that came with its submission's
ack resolves its wait with no poll at all.

A job's future never fails because of a failover: only an id that a settled grid does not know fails
its waits (`JobNotFound`); "not known yet" and a grid that cannot be reached are waited out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import GridUnavailable, JobNotFound, JobTimeout, ProtocolError
from ..protocol import Result, WaitRequest, WaitResponse
from .specs import decode_value
from .transport import Transport

WINDOW = 512  # ids per result poll: many waits (futures, wait_result calls) share one request
POLL = 1.0  # s one result poll may wait on the node: an id added meanwhile joins the next poll


@dataclass(eq=False)
class _Waiter:
    """One wait for a job's result: a future from `submit` (resolved with the job's value) or a
    `wait_result` call (resolved with the result record)."""

    fut: asyncio.Future
    raw: bool = False
    deadline: float | None = None  # wait_result's timeout (monotonic)
    asked: bool = False            # a poll that included this id has come back since it was registered


class Results:
    """The waits of one client, and the task that polls for them while there are any."""

    def __init__(self, transport: Transport, on_result: Callable[[Result], None] | None = None) -> None:
        """`on_result`, if given, sees every result record that resolves a wait (node, timings...)."""
        self._transport = transport
        self._on_result = on_result
        self._waiting: dict[str, list[_Waiter]] = {}
        self._early: dict[str, Result] = {}  # results that came with an ack, for waits not registered yet
        self.poller: asyncio.Task | None = None  # the poll loop, while some wait is open (None: never needed)
        self._poll_error: Exception | None = None
        self._closed = False

    def arrived(self, results: Iterable[Result]) -> None:
        """Results that came with an ack: they resolve the waits registered for them next."""
        for res in results:
            self._early[res.job_id] = res

    def value_of(self, job_id: str, fut: asyncio.Future) -> None:
        """Resolve `fut` with the job's value (or what it raised): `fut` of `submit`."""
        self._track(job_id, _Waiter(fut))

    async def record(self, job_id: str, timeout: float | None) -> Result:
        """The job's result record, waiting up to `timeout` seconds (None: as long as it takes).

        Raises JobNotFound only when the grid is settled and no node holds the job, JobTimeout when the
        timeout passes first.
        """
        fut = asyncio.get_running_loop().create_future()
        w = _Waiter(fut, raw=True, deadline=None if timeout is None else time.monotonic() + max(0.0, timeout))
        self._track(job_id, w)
        try:
            if timeout is None:
                return await fut
            # the loop answers by the deadline; the grace covers one failing-over request when none answers
            return await asyncio.wait_for(asyncio.shield(fut), max(0.0, timeout) + self._transport.timeout + POLL)
        except TimeoutError:
            if fut.done() and fut.exception() is not None:
                raise fut.exception() from None
            raise JobTimeout(f"job {job_id} has no result after {timeout} s"
                             + (f" (last error: {self._poll_error})" if self._poll_error else "")) from None
        finally:
            if not fut.done():
                fut.cancel()

    async def close(self) -> None:
        self._closed = True
        if self.poller is not None:
            self.poller.cancel()
            await asyncio.gather(self.poller, return_exceptions=True)

    def _track(self, job_id: str, w: _Waiter) -> None:
        """Resolve `w` with the job's result: at once if it came with the ack, else from the poll loop."""
        self._waiting.setdefault(job_id, []).append(w)
        early = self._early.pop(job_id, None)
        if early is not None:
            self._resolve(early)
        elif self.poller is None or self.poller.done():
            self.poller = asyncio.ensure_future(self._poll_loop())

    def _expire(self, now: float) -> None:
        """Drop finished waits; a wait_result past its deadline that the grid was asked about times out."""
        for jid in list(self._waiting):
            ws = [w for w in self._waiting[jid] if not w.fut.done()]
            for w in ws:
                if w.deadline is not None and now >= w.deadline and w.asked:
                    w.fut.set_exception(JobTimeout(f"job {jid} has no result yet (waited until the timeout)"))
            ws = [w for w in ws if not w.fut.done()]
            if ws:
                self._waiting[jid] = ws
            else:
                del self._waiting[jid]

    def _window(self, offset: int) -> tuple[list[str], int]:
        """The ids of the next poll: all of them, or past WINDOW the oldest half (they finish next) and a
        rotating half (none starves); and the rotation's next offset."""
        ids = list(self._waiting)
        if len(ids) <= WINDOW:
            return ids, offset
        half = WINDOW // 2
        rest = ids[half:]
        offset = offset % len(rest)
        return ids[:half] + (rest[offset:] + rest[:offset])[:half], offset + half

    async def _poll_loop(self) -> None:
        offset = 0
        while not self._closed:
            now = time.monotonic()
            self._expire(now)
            ids, offset = self._window(offset)
            if not ids:
                break
            sent = [(i, list(self._waiting.get(i, ()))) for i in ids]
            deadlines = [w.deadline for _, ws in sent for w in ws if w.deadline is not None]
            hold = POLL if not deadlines else max(0.0, min(POLL, min(deadlines) - now))
            try:
                resp: WaitResponse = await self._transport.call(
                    "POST", "/results/wait", WaitRequest(ids=ids, timeout=hold), WaitResponse, poll=hold)
            except (GridUnavailable, ProtocolError) as e:
                self._poll_error = e
                for _, ws in sent:  # a wait_result past its deadline learns why it got no answer
                    for w in ws:
                        if w.deadline is not None and time.monotonic() >= w.deadline and not w.fut.done():
                            w.fut.set_exception(e)
                await asyncio.sleep(0.2)
                continue
            self._poll_error = None
            for _, ws in sent:
                for w in ws:
                    w.asked = True
            for res in resp.results:
                self._resolve(res)
            for jid in resp.unknown:
                for w in self._waiting.pop(jid, []):
                    if not w.fut.done():
                        w.fut.set_exception(JobNotFound(f"no server knows job {jid}"))
            # resp.undetermined: not known yet (a failover is under way); those ids are simply asked again

    def _resolve(self, res: Result) -> None:
        waiters = self._waiting.pop(res.job_id, [])
        if self._on_result is not None and waiters:
            self._on_result(res)
        for w in waiters:
            if w.fut.done():
                continue
            if w.raw:
                w.fut.set_result(res)
                continue
            try:
                w.fut.set_result(decode_value(res))
            except BaseException as e:  # noqa: BLE001 - the job's own exception travels to the caller
                w.fut.set_exception(e)
