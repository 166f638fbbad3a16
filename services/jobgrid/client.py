"""The Python client: submit jobs, get futures, read results; async (`AsyncClient`) and blocking (`Client`).

Submissions made close together travel in one request (group commit), results come back by
long-poll in batches, and a node that disappears is replaced by another the client knows of.
Submitting is idempotent by job id, so a retried submission never creates a second job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import ssl as ssl_mod
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import msgspec

from .logs import new_cause
from .errors import (
    ConfigError, GridUnavailable, JobCancelled, JobFailed, JobNotFound, JobTimeout, ProtocolError, RemoteError,
)
from .node.batching import GroupCommit
from .transport import Transport, token_from_env  # noqa: F401 - token_from_env: re-exported for the CLI
from .protocol import (
    CancelRequest, JobSpec, Result, ServerList, SubmitRequest, SubmitResponse, WaitRequest, WaitResponse,
)

_WAIT_WINDOW = 512  # ids per result poll: many waits (futures, wait_result calls) share one request
_POLL = 1.0  # s one result poll may wait on the node: an id added meanwhile joins the next poll
_LINGER = 0.003  # s a node may hold the ack of a small submission for its results (see _flush_submits)
_LINGER_MAX_JOBS = 16


@dataclass(frozen=True)
class ScriptOutput:
    """What a script job left behind."""

    exit_code: int
    stdout: str
    stderr: str


def new_job_id() -> str:
    return uuid.uuid4().hex


def decode_value(res: Result) -> Any:
    """The job's return value, or raise what it raised (only ever on the client side)."""
    if res.state == "cancelled":
        raise JobCancelled(f"job {res.job_id} was cancelled")
    if res.state == "failed":
        if res.value_format == "pickle" and res.value:
            try:
                exc = cloudpickle.loads(res.value)
            except Exception:  # noqa: BLE001 - the exception's class is not importable here
                exc = None
            if isinstance(exc, BaseException):
                if res.traceback:
                    exc.add_note(f"remote traceback (job {res.job_id} on node {res.node}):\n{res.traceback}")
                raise exc
            raise RemoteError(res.error or "job failed", res.traceback, res.job_id)
        raise JobFailed(res.error or f"job {res.job_id} failed (exit code {res.exit_code})", res.traceback,
                        res.job_id)
    if res.value_format == "pickle":
        return cloudpickle.loads(res.value) if res.value is not None else None
    if res.value_format == "json":
        return msgspec.json.decode(res.value) if res.value is not None else None
    return ScriptOutput(res.exit_code or 0, res.stdout, res.stderr)


def build_spec(kind: str, *, job_id: str | None = None, **opts: Any) -> JobSpec:
    """A validated JobSpec. The job's id is `job_id=` or `id=` (the same thing; give one)."""
    if "id" in opts:
        alias = opts.pop("id")
        if job_id is not None and alias is not None and alias != job_id:
            raise ConfigError(f"give the job id once: job_id={job_id!r} and id={alias!r} differ")
        job_id = job_id or alias
    delay = opts.pop("delay", None)
    if delay is not None:
        if delay < 0:
            raise ConfigError("delay must be >= 0 seconds")
        opts["run_at"] = time.time() + delay
    if "retry_on" in opts:
        opts["retry_on"] = [t if isinstance(t, str) else t.__name__ for t in opts["retry_on"]]
    opts = {k: v for k, v in opts.items() if v is not None}
    try:
        spec = JobSpec(id=job_id or new_job_id(), kind=kind, **opts)  # type: ignore[arg-type]
        return msgspec.convert(msgspec.to_builtins(spec), JobSpec)  # validate like a server would
    except (msgspec.ValidationError, TypeError) as e:
        raise ConfigError(f"invalid job: {e}") from None


@dataclass(eq=False)
class _Waiter:
    """One wait for a job's result: a future from `submit` (resolved with the job's value) or a
    `wait_result` call (resolved with the result record)."""

    fut: asyncio.Future
    raw: bool = False
    deadline: float | None = None  # wait_result's timeout (monotonic)
    asked: bool = False            # a poll that included this id has come back since it was registered


class AsyncClient(Transport):
    """`AsyncClient("http://127.0.0.1:8000")` or a list of addresses for failover.

    `timeout` bounds each call (a submission's ack, a status query) including its failover to other
    nodes; the futures of submitted jobs wait for as long as their jobs take.
    """

    def __init__(self, address: str | Sequence[str] = "http://127.0.0.1:8000", *, token: str | None = None,
                 ssl: ssl_mod.SSLContext | None = None, timeout: float = 30.0,
                 on_result: Callable[[Result], None] | None = None) -> None:
        """`on_result`, if given, sees every result record that resolves a future (node, timings...)."""
        super().__init__(address, token=token, ssl=ssl, timeout=timeout)
        self._waiting: dict[str, list[_Waiter]] = {}
        self._waiter: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._submits: GroupCommit[JobSpec, SubmitResponse] = GroupCommit(self._flush_submits, max_items=5000)
        self._on_result = on_result
        self._poll_error: Exception | None = None
        self._unacked: dict[str, asyncio.Future] = {}
        self._early: dict[str, Result] = {}  # results that came with an ack, for futures not tracked yet
        self._linger_ok = True

    # ---- submitting ------------------------------------------------------------------------------------
    async def submit_spec(self, spec: JobSpec) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        fut.job_id = spec.id  # type: ignore[attr-defined]
        await self._submits.submit([spec])
        self._track(spec.id, _Waiter(fut))  # only acknowledged ids are waited for
        return fut

    def submit_detached(self, spec: JobSpec) -> asyncio.Future:
        """Submit without waiting for the ack: a failed ack, or later the result, arrives in the future."""
        fut = asyncio.get_running_loop().create_future()
        jid = fut.job_id = spec.id  # type: ignore[attr-defined]
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
            self._track(jid, _Waiter(fut))
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
        # a small batch lets the node hold the ack up to _LINGER for the jobs' results (short jobs then
        # need no wait request); a large one is acked at once
        linger = _LINGER if len(specs) <= _LINGER_MAX_JOBS and self._linger_ok else 0.0
        while True:
            extra = {"linger": linger} if linger else {}
            try:
                # an attempt after a failed one is a resubmission (retry: the grid looks the ids up first,
                # so a job whose first attempt did reach a node is not created twice)
                resp: SubmitResponse = await self._call(
                    "POST", "/jobs", SubmitRequest(jobs=specs, **extra), SubmitResponse, cause=cause,
                    again=SubmitRequest(jobs=specs, retry=True, **extra))
            except ProtocolError as e:
                if e.status == 422 and linger and "linger" in str(e):  # a node from before `linger`
                    self._linger_ok, linger = False, 0.0
                    continue
                raise
            for res in resp.results:
                self._early[res.job_id] = res
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
        return await self.submit_spec(build_spec("call", target=target, args=list(args), kwargs=kwargs,
                                                 **(_opts or {})))

    async def map(self, fn: Callable, *iterables: Iterable, **opts: Any) -> list[Any]:
        specs = [pickle_spec(fn, args, {}, **opts) for args in zip(*iterables)]
        futs = await self.submit_many(specs)
        del specs
        return [await f for f in futs]

    async def submit_many(self, specs: Sequence[JobSpec]) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        futs = []
        for i in range(0, len(specs), 5000):
            chunk = list(specs[i:i + 5000])
            await self._submits.submit(chunk)
            for s in chunk:
                f = loop.create_future()
                f.job_id = s.id  # type: ignore[attr-defined]
                self._track(s.id, _Waiter(f))
                futs.append(f)
        return futs

    # ---- results -----------------------------------------------------------------------------------------
    def _track(self, job_id: str, w: _Waiter) -> None:
        """Resolve `w` with the job's result: at once if it came with the ack, else from the wait loop."""
        self._waiting.setdefault(job_id, []).append(w)
        early = self._early.pop(job_id, None)
        if early is not None:
            self._resolve(early)
        else:
            self._ensure_waiter()

    def _ensure_waiter(self) -> None:
        self._wake.set()
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.ensure_future(self._wait_loop())

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

    async def _wait_loop(self) -> None:
        """One long poll at a time for every awaited id (a window of them when there are many). Only an
        id that a settled grid does not know fails its waits (JobNotFound); "not known yet" and a grid
        that cannot be reached are waited out: a job's future never fails because of a failover."""
        offset = 0
        while not self._closed:
            now = time.monotonic()
            self._expire(now)
            ids = list(self._waiting)
            if not ids:
                break
            if len(ids) > _WAIT_WINDOW:  # the oldest half (they finish next) and a rotating half (no starving)
                half = _WAIT_WINDOW // 2
                rest = ids[half:]
                offset = offset % len(rest)
                ids = ids[:half] + (rest[offset:] + rest[:offset])[:half]
                offset += half
            sent = [(i, list(self._waiting.get(i, ()))) for i in ids]
            deadlines = [w.deadline for _, ws in sent for w in ws if w.deadline is not None]
            hold = _POLL if not deadlines else max(0.0, min(_POLL, min(deadlines) - now))
            self._wake.clear()
            try:
                resp: WaitResponse = await self._call("POST", "/results/wait", WaitRequest(ids=ids, timeout=hold),
                                                      WaitResponse, poll=hold)
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

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        return decode_value(await self.wait_result(job_id, timeout))

    async def wait_result(self, job_id: str, timeout: float | None = None) -> Result:
        """The job's result record, waiting up to `timeout` seconds (None: as long as it takes).

        Many concurrent calls share one long poll. Raises JobNotFound only when the grid is settled and
        no node holds the job, JobTimeout when the timeout passes first.
        """
        await self._settled([job_id])
        fut = asyncio.get_running_loop().create_future()
        w = _Waiter(fut, raw=True, deadline=None if timeout is None else time.monotonic() + max(0.0, timeout))
        self._track(job_id, w)
        try:
            if timeout is None:
                return await fut
            # the loop answers by the deadline; the grace covers one failing-over request when none answers
            return await asyncio.wait_for(asyncio.shield(fut), max(0.0, timeout) + self.timeout + _POLL)
        except TimeoutError:
            if fut.done() and fut.exception() is not None:
                raise fut.exception() from None
            raise JobTimeout(f"job {job_id} has no result after {timeout} s"
                             + (f" (last error: {self._poll_error})" if self._poll_error else "")) from None
        finally:
            if not fut.done():
                fut.cancel()

    async def status(self, job_id: str) -> dict:
        await self._settled([job_id])
        return await self._call("GET", f"/jobs/{job_id}", None, dict)

    async def servers(self) -> ServerList:
        return await self._call("GET", "/servers", None, ServerList)

    async def jobs(self, state: str | None = None, limit: int = 100) -> list[dict]:
        q = f"?limit={limit}" + (f"&state={state}" if state else "")
        return await self._call("GET", f"/jobs{q}", None, list)

    async def cancel(self, *job_ids: str) -> list[str]:
        await self._settled(job_ids)
        out = await self._call("POST", "/jobs/cancel", CancelRequest(ids=list(job_ids)), dict)
        return out["cancelled"]

    async def close(self) -> None:
        """Wait (up to `timeout`) for submissions still being acknowledged, so none is dropped unsent; stop."""
        if self._unacked:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self._settled(list(self._unacked))
        self._closed = True
        for t in [self._waiter, *self._background]:
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in [self._waiter, *self._background] if t is not None),
                             return_exceptions=True)
        for link in self._links.values():
            await link.close()
        self._links.clear()
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def pickle_spec(fn: Callable, args: Sequence, kwargs: dict, **opts: Any) -> JobSpec:
    if not callable(fn):
        raise ConfigError(f"submit() needs a callable, got {type(fn).__name__}")
    name = opts.pop("name", None) or getattr(fn, "__qualname__", getattr(fn, "__name__", "job"))[:256]
    return build_spec("pickle", payload=cloudpickle.dumps((fn, tuple(args), dict(kwargs))), name=name, **opts)


def script_spec(path_or_source: str | os.PathLike, argv: Sequence[str] = (), **opts: Any) -> JobSpec:
    p = Path(path_or_source)
    source: str
    name = opts.pop("name", None)
    if isinstance(path_or_source, os.PathLike) or ("\n" not in str(path_or_source) and p.suffix == ".py"):
        try:
            source = p.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read script {p}: {e.strerror}") from None
        name = name or p.name
    else:
        source = str(path_or_source)
    return build_spec("script", source=source, argv=[str(a) for a in argv], name=name or "script", **opts)


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
