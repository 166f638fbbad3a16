"""`AsyncClient`: submit jobs and get asyncio futures of their values; status, server list, cancel.

Submissions made close together travel in one request (group commit); a small one lets the node hold
its ack a few milliseconds for the jobs' results, so a short job needs no wait request at all. The
requests go through a `Transport` (failover across the grid's nodes), the waits through `Results`
(one long poll for all of them). Submitting is idempotent by job id, so a retried submission never
creates a second job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl as ssl_mod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..batching import GroupCommit
from ..errors import GridUnavailable, ProtocolError
from ..logs import new_cause
from ..protocol import CancelRequest, JobSpec, Result, ServerList, SubmitRequest, SubmitResponse
from .results import Results
from .specs import call_spec, decode_value, pickle_spec, script_spec
from .transport import Transport

LINGER = 0.003  # s a node may hold the ack of a small submission for its results (see _flush_submits)
LINGER_MAX_JOBS = 16
BATCH = 5000  # jobs per submission request


class AsyncClient:
    """`AsyncClient("http://127.0.0.1:8000")` or a list of addresses for failover.

    `timeout` bounds each call (a submission's ack, a status query) including its failover to other
    nodes; the futures of submitted jobs wait for as long as their jobs take.
    """

    def __init__(self, address: str | Sequence[str] = "http://127.0.0.1:8000", *, token: str | None = None,
                 ssl: ssl_mod.SSLContext | None = None, timeout: float = 30.0,
                 on_result: Callable[[Result], None] | None = None) -> None:
        """`on_result`, if given, sees every result record that resolves a future (node, timings...)."""
        self._transport = Transport(address, token=token, ssl=ssl, timeout=timeout)
        self._results = Results(self._transport, on_result)
        self._submits: GroupCommit[JobSpec, SubmitResponse] = GroupCommit(self._flush_submits, max_items=BATCH)
        self._unacked: dict[str, asyncio.Future] = {}
        self._linger_ok = True

    @property
    def addresses(self) -> list[str]:
        """The addresses tried, in order: the given ones, then the nodes learned from the grid."""
        return self._transport.addresses

    @property
    def timeout(self) -> float:
        return self._transport.timeout

    # ---- submitting ------------------------------------------------------------------------------------
    async def submit_spec(self, spec: JobSpec) -> asyncio.Future:
        fut = _future(spec.id)
        await self._submits.submit([spec])
        self._results.value_of(spec.id, fut)  # only acknowledged ids are waited for
        return fut

    def submit_detached(self, spec: JobSpec) -> asyncio.Future:
        """Submit without waiting for the ack: a failed ack, or later the result, arrives in the future."""
        fut = _future(spec.id)
        jid = spec.id
        ack = asyncio.ensure_future(self._submits.submit([spec]))
        self._unacked[jid] = ack
        del spec  # the ack's callback must not keep the job's payload alive

        def acked(a: asyncio.Future) -> None:
            self._unacked.pop(jid, None)
            err = GridUnavailable("submission cancelled") if a.cancelled() else a.exception()
            if err is not None:
                if not fut.done():
                    fut.set_exception(err)
                return
            self._results.value_of(jid, fut)
        ack.add_done_callback(acked)
        return fut

    async def _settled(self, ids: Iterable[str]) -> None:
        """Wait for the acks of detached submissions of these ids, so the grid knows them."""
        pending = [self._unacked[i] for i in ids if i in self._unacked]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _flush_submits(self, groups: list[list[JobSpec]]) -> list[SubmitResponse]:
        specs = [s for g in groups for s in g]
        cause = new_cause("sub-")  # the batch's causal id: the nodes' log lines about these jobs carry it
        # a small batch lets the node hold the ack up to LINGER for the jobs' results (short jobs then
        # need no wait request); a large one is acked at once
        linger = LINGER if len(specs) <= LINGER_MAX_JOBS and self._linger_ok else 0.0
        while True:
            extra = {"linger": linger} if linger else {}
            try:
                # an attempt after a failed one is a resubmission (retry: the grid looks the ids up first,
                # so a job whose first attempt did reach a node is not created twice)
                resp: SubmitResponse = await self._transport.call(
                    "POST", "/jobs", SubmitRequest(jobs=specs, **extra), SubmitResponse, cause=cause,
                    again=SubmitRequest(jobs=specs, retry=True, **extra))
            except ProtocolError as e:
                if e.status == 422 and linger and "linger" in str(e):  # a node from before `linger`
                    self._linger_ok, linger = False, 0.0
                    continue
                raise
            self._results.arrived(resp.results)
            return [resp] * len(groups)

    async def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> asyncio.Future:
        return await self.submit_spec(pickle_spec(fn, args, kwargs))

    async def submit_job(self, fn: Callable, args: Sequence = (), kwargs: dict | None = None, **opts: Any
                         ) -> asyncio.Future:
        return await self.submit_spec(pickle_spec(fn, args, kwargs or {}, **opts))

    async def submit_script(self, path_or_source: str | os.PathLike, argv: Sequence[str] = (), **opts: Any
                            ) -> asyncio.Future:
        return await self.submit_spec(script_spec(path_or_source, argv, **opts))

    async def submit_call(self, target: str, *args: Any, _opts: dict | None = None, **kwargs: Any) -> asyncio.Future:
        return await self.submit_spec(call_spec(target, args, kwargs, **(_opts or {})))

    async def map(self, fn: Callable, *iterables: Iterable, **opts: Any) -> list[Any]:
        specs = [pickle_spec(fn, args, {}, **opts) for args in zip(*iterables)]
        futs = await self.submit_many(specs)
        del specs
        return [await f for f in futs]

    async def submit_many(self, specs: Sequence[JobSpec]) -> list[asyncio.Future]:
        futs = []
        for i in range(0, len(specs), BATCH):
            chunk = list(specs[i:i + BATCH])
            await self._submits.submit(chunk)
            for s in chunk:
                f = _future(s.id)
                self._results.value_of(s.id, f)
                futs.append(f)
        return futs

    # ---- results and the grid -------------------------------------------------------------------------
    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        return decode_value(await self.wait_result(job_id, timeout))

    async def wait_result(self, job_id: str, timeout: float | None = None) -> Result:
        """The job's result record, waiting up to `timeout` seconds (None: as long as it takes).

        Many concurrent calls share one long poll. Raises JobNotFound only when the grid is settled and
        no node holds the job, JobTimeout when the timeout passes first.
        """
        await self._settled([job_id])
        return await self._results.record(job_id, timeout)

    async def status(self, job_id: str) -> dict:
        await self._settled([job_id])
        return await self._transport.call("GET", f"/jobs/{job_id}", None, dict)

    async def servers(self) -> ServerList:
        return await self._transport.call("GET", "/servers", None, ServerList)

    async def jobs(self, state: str | None = None, limit: int = 100) -> list[dict]:
        q = f"?limit={limit}" + (f"&state={state}" if state else "")
        return await self._transport.call("GET", f"/jobs{q}", None, list)

    async def cancel(self, *job_ids: str) -> list[str]:
        await self._settled(job_ids)
        out = await self._transport.call("POST", "/jobs/cancel", CancelRequest(ids=list(job_ids)), dict)
        return out["cancelled"]

    async def close(self) -> None:
        """Wait (up to `timeout`) for submissions still being acknowledged, so none is dropped unsent; stop."""
        if self._unacked:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self._settled(list(self._unacked))
        await self._results.close()
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _future(job_id: str) -> asyncio.Future:
    """A future for one job's value, named by its `job_id`."""
    fut = asyncio.get_running_loop().create_future()
    fut.job_id = job_id  # type: ignore[attr-defined]
    return fut
