"""A warm pool of job processes (`jobgrid.worker`), driven from asyncio.

Each worker is a `python -P -u -m jobgrid.worker` child in its own session,
with a scrubbed environment, its own work dir (`work_root/<index>`) and two
pipes for length-prefixed msgpack frames. `WorkerPool.run` sends one job to an
idle worker and turns the reply into a `protocol.Result`. A job that times out
gets its whole process group SIGKILLed; a worker that dies mid-job is reported
as `WorkerCrashed` (retry=True). Either way the slot is respawned in the
background and the node keeps going. Cancelling the task awaiting `run` kills
the job's worker too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import struct
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog

from ..errors import ConfigError
from ..protocol import JobRecord, Result
from ..worker import (
    MAX_FRAME,
    FromChild,
    WorkerJob,
    WorkerReady,
    WorkerReply,
    capture_paths,
    encode_frame,
    read_tail,
)

PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH")
STARTUP_TIMEOUT = 60.0     # seconds for a fresh worker to say it is ready
EXIT_GRACE = 1.0           # after the worker exits, how long a reply may still trickle in
REAP_TIMEOUT = 5.0         # after EOF on the pipe, how long to wait for the process to end

_HEADER = struct.Struct(">I")
_decoder = msgspec.msgpack.Decoder(FromChild)


class PoolClosed(RuntimeError):
    """`run` was called on (or was waiting in) a pool that has been closed."""


class _WorkerGone(Exception):
    """The pipe hit EOF or carried garbage: the worker can no longer be trusted."""


class _Slot:
    """One worker position; its process is replaced when it dies."""

    def __init__(self, index: int, workdir: Path, capture_dir: Path) -> None:
        self.index = index
        self.workdir = workdir
        self.capture_dir = capture_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.read_transport: asyncio.ReadTransport | None = None
        self.write_transport: asyncio.WriteTransport | None = None
        self.exited: asyncio.Future[int] | None = None
        self.job_id: str | None = None
        self.state = "starting"          # starting | idle | busy
        self.since = time.time()
        self.respawn: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def set_state(self, state: str, job_id: str | None = None) -> None:
        self.state, self.job_id, self.since = state, job_id, time.time()

    def close_pipes(self) -> None:
        for t in (self.read_transport, self.write_transport):
            if t is not None:
                t.close()
        self.read_transport = self.write_transport = None
        self.reader = None

    def kill(self) -> None:
        """SIGKILL the worker and everything in its process group (jobs' subprocesses too)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            # Already reaped: still sweep the group for stragglers the job left behind.
            if proc is not None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            with contextlib.suppress(OSError):
                proc.kill()

    async def read_message(self) -> WorkerReady | WorkerReply:
        assert self.reader is not None
        try:
            header = await self.reader.readexactly(_HEADER.size)
            (size,) = _HEADER.unpack(header)
            if size > MAX_FRAME:
                raise _WorkerGone(f"frame of {size} bytes from worker is too large")
            body = await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            raise _WorkerGone("EOF on the worker pipe") from e
        try:
            return _decoder.decode(body)
        except msgspec.DecodeError as e:
            raise _WorkerGone(f"undecodable frame from worker: {e}") from e


class WorkerPool:
    """`size` warm job processes; `run` executes one JobRecord on one of them."""

    def __init__(self, size: int, *, work_root: Path, node_id: str,
                 env: Mapping[str, str] | None = None, log: Any = None, user: str | None = None) -> None:
        if size < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        self.size = size
        self.work_root = Path(work_root).resolve()
        self.node_id = node_id
        self.extra_env = dict(env or {})
        # jobs as another account (the node runs as root): uid, gid
        self.user = (pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid) if user else None
        self.user_name = user
        self.log = log if log is not None else structlog.get_logger("jobgrid.pool")
        self._slots = [_Slot(i, self.work_root / str(i), self.work_root / ".io" / str(i)) for i in range(size)]
        self._idle: asyncio.Queue[_Slot | None] = asyncio.Queue()
        self._respawns: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False

    # ---- public ---------------------------------------------------------------------------------

    @property
    def idle(self) -> int:
        """Workers free to take a job right now."""
        return sum(1 for s in self._slots if s.state == "idle") if not self._closed else 0

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Spawn every worker and wait until each is warm. Raises if a worker cannot start."""
        if self._started:
            raise RuntimeError("WorkerPool.start() called twice")
        if self._closed:
            raise PoolClosed("pool is closed")
        self._started = True
        self.work_root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            self._check_reachable()
        results = await asyncio.gather(*(self._spawn(s) for s in self._slots), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            raise RuntimeError(f"could not start the worker pool: {errors[0]!r}") from errors[0]
        for slot in self._slots:
            self._make_idle(slot)
        self.log.info("pool.started", size=self.size, pids=[s.pid for s in self._slots])

    async def run(self, record: JobRecord, *, timeout: float | None,
                  on_start: Callable[[], None] | None = None) -> Result:
        """Run one job on a free worker (waiting for one). Job failures come back as a Result.

        Raises PoolClosed if the pool is closed before a worker is free; cancelling the
        awaiting task kills the job's worker (and the slot is respawned).
        """
        if self._closed:
            raise PoolClosed("pool is closed")
        while True:
            slot = await self._idle.get()
            if slot is None:
                self._idle.put_nowait(None)  # pass the close signal on to the next waiter
                raise PoolClosed("pool is closed")
            if slot.exited is not None and not slot.exited.done():
                break
            self.log.warning("pool.idle_worker_died", worker=slot.index, pid=slot.pid)
            self._retire(slot)  # died between jobs (a thread a job left behind, say)
        spec = record.spec
        slot.set_state("busy", spec.id)
        if on_start is not None:  # from here on the job runs: cancelling it kills the worker
            on_start()
        job = WorkerJob(job_id=spec.id, kind=spec.kind, attempt=record.attempts, payload=spec.payload,
                        source=spec.source, argv=list(spec.argv), target=spec.target, args=list(spec.args),
                        kwargs=dict(spec.kwargs), name=spec.name)
        started = time.time()
        reply_task: asyncio.Task[WorkerReady | WorkerReply] | None = None
        try:
            assert slot.write_transport is not None and slot.exited is not None
            slot.write_transport.write(encode_frame(job))
            reply_task = asyncio.ensure_future(slot.read_message())
            done, _ = await asyncio.wait({reply_task, slot.exited}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return await self._timed_out(slot, record, started, timeout)
            if reply_task not in done:  # the process ended first; a reply may still be in the pipe
                await asyncio.wait({reply_task}, timeout=EXIT_GRACE)
            reply = None
            if reply_task.done() and not reply_task.cancelled() and reply_task.exception() is None:
                msg = reply_task.result()
                if isinstance(msg, WorkerReply) and msg.job_id == spec.id:
                    reply = msg
            if reply is None:
                return await self._crashed(slot, record, started)
            result = self._result(record, reply)
            if slot.exited.done():  # replied, then died (a thread of the job, say)
                self._retire(slot)
            else:
                self._make_idle(slot)
            return result
        except asyncio.CancelledError:
            self.log.info("pool.job_cancelled", job_id=spec.id, worker=slot.index, pid=slot.pid)
            self._retire(slot)
            raise
        except BaseException:
            self._retire(slot)
            raise
        finally:
            if reply_task is not None:
                if not reply_task.done():
                    reply_task.cancel()
                elif not reply_task.cancelled():
                    reply_task.exception()  # mark retrieved: EOF after a kill is expected

    def snapshot(self) -> list[dict[str, Any]]:
        """Per worker: index, pid, state, job_id (or None) and since (epoch seconds of the last change)."""
        return [{"index": s.index, "pid": s.pid, "state": s.state, "job_id": s.job_id, "since": s.since}
                for s in self._slots]

    async def close(self) -> None:
        """Kill every worker (and its subprocesses) and reap it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._idle.put_nowait(None)
        for task in list(self._respawns):
            task.cancel()
        if self._respawns:
            await asyncio.gather(*self._respawns, return_exceptions=True)
        for slot in self._slots:
            slot.kill()
        for slot in self._slots:
            await self._reap(slot)
            slot.close_pipes()
            slot.set_state("closed")
        self.log.info("pool.closed", size=self.size)

    # ---- internals ------------------------------------------------------------------------------

    def _check_reachable(self) -> None:
        """The job account must be able to walk down to its work dirs (and nothing more is opened to it)."""
        python = Path(os.path.realpath(sys.executable))
        for what, target in (("its work dir", self.work_root), ("the Python interpreter", python)):
            for d in [target.parent if target == python else target, *target.parent.parents]:
                if not d.stat().st_mode & 0o001:
                    raise ConfigError(f"--job-user {self.user_name}: it cannot reach {what} {target} because {d} "
                                      "is not searchable by other users (chmod o+x, or move it)")

    def _own(self, *dirs: Path) -> None:
        if self.user is not None:
            for d in dirs:
                os.chown(d, *self.user)
                d.chmod(0o700)

    def _child_env(self, slot: _Slot) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env["HOME"] = str(slot.workdir)
        env.update(self.extra_env)
        return env

    async def _spawn(self, slot: _Slot) -> None:
        """Start a fresh process in `slot` and wait for its ready message."""
        loop = asyncio.get_running_loop()
        slot.set_state("starting")
        slot.workdir.mkdir(parents=True, exist_ok=True)
        slot.capture_dir.mkdir(parents=True, exist_ok=True)
        self._own(slot.workdir, slot.capture_dir)
        as_user = ["--user", f"{self.user[0]}:{self.user[1]}"] if self.user is not None else []
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        spawning = asyncio.ensure_future(asyncio.create_subprocess_exec(
            sys.executable, "-P", "-u", "-m", "jobgrid.worker",
            "--rfd", str(p2c_r), "--wfd", str(c2p_w),
            "--workdir", str(slot.workdir), "--capture", str(slot.capture_dir), *as_user,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=None,
            cwd=slot.workdir, env=self._child_env(slot), close_fds=True, pass_fds=(p2c_r, c2p_w),
            start_new_session=True))
        try:
            proc = await asyncio.shield(spawning)
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):  # do not leak a process started meanwhile
                with contextlib.suppress(Exception):
                    orphan = await spawning
                    with contextlib.suppress(OSError):
                        os.killpg(orphan.pid, signal.SIGKILL)
                    await orphan.wait()
            for fd in (p2c_r, p2c_w, c2p_r, c2p_w):
                os.close(fd)
            raise
        os.close(p2c_r)
        os.close(c2p_w)
        slot.proc = proc
        slot.exited = asyncio.ensure_future(proc.wait())
        try:
            reader = asyncio.StreamReader()
            slot.read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(c2p_r, "rb", buffering=0))
            slot.reader = reader
            slot.write_transport, _ = await loop.connect_write_pipe(
                asyncio.Protocol, os.fdopen(p2c_w, "wb", buffering=0))
            ready_task = asyncio.ensure_future(slot.read_message())
            try:
                done, _ = await asyncio.wait({ready_task}, timeout=STARTUP_TIMEOUT)
            finally:
                if not ready_task.done():
                    ready_task.cancel()
            if not done:
                raise RuntimeError(f"worker {slot.index} did not become ready in {STARTUP_TIMEOUT} s")
            msg = ready_task.result()
            if not isinstance(msg, WorkerReady):
                raise RuntimeError(f"worker {slot.index} sent {type(msg).__name__} instead of ready")
        except BaseException as e:
            slot.kill()
            await self._reap(slot)
            slot.close_pipes()
            if isinstance(e, _WorkerGone):
                raise RuntimeError(f"worker {slot.index} exited during start-up "
                                   f"(exit code {proc.returncode})") from e
            raise
        self.log.debug("pool.worker_ready", worker=slot.index, pid=proc.pid)

    def _make_idle(self, slot: _Slot) -> None:
        if self._closed:
            return
        slot.set_state("idle")
        self._idle.put_nowait(slot)

    async def _reap(self, slot: _Slot) -> None:
        if slot.exited is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(slot.exited), REAP_TIMEOUT)
        except asyncio.TimeoutError:
            slot.kill()
            await slot.exited

    def _retire(self, slot: _Slot) -> None:
        """Kill the slot's process and start a replacement in the background."""
        slot.kill()
        if self._closed or (slot.respawn is not None and not slot.respawn.done()):
            return
        slot.set_state("starting")
        task = asyncio.ensure_future(self._respawn(slot))
        slot.respawn = task
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, slot: _Slot) -> None:
        await self._reap(slot)
        slot.close_pipes()
        delay = 0.1
        while not self._closed:
            try:
                await self._spawn(slot)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - keep trying; the node must not lose capacity
                self.log.error("pool.respawn_failed", worker=slot.index, error=repr(e), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self._closed:
                slot.kill()
                await self._reap(slot)
                slot.close_pipes()
                return
            self.log.info("pool.worker_respawned", worker=slot.index, pid=slot.pid)
            self._make_idle(slot)
            return

    def _captured(self, slot: _Slot) -> tuple[str, str]:
        out, err = capture_paths(slot.capture_dir)
        return read_tail(out), read_tail(err)

    async def _timed_out(self, slot: _Slot, record: JobRecord, started: float, timeout: float | None) -> Result:
        pid = slot.pid
        slot.kill()
        await self._reap(slot)
        stdout, stderr = self._captured(slot)
        self.log.warning("pool.job_timeout", job_id=record.spec.id, worker=slot.index, pid=pid, timeout=timeout)
        self._retire(slot)
        return Result(job_id=record.spec.id, state="failed", error_type="JobTimeout",
                      error=f"job exceeded its timeout of {timeout} s and was killed",
                      stdout=stdout, stderr=stderr, node=self.node_id, attempts=record.attempts,
                      submitted_at=record.submitted_at, started_at=started, finished_at=time.time())

    async def _crashed(self, slot: _Slot, record: JobRecord, started: float) -> Result:
        pid = slot.pid
        if slot.exited is not None and not slot.exited.done():
            # Its pipe closed or carried garbage but it still runs: give it a moment, then kill.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(slot.exited), EXIT_GRACE)
            slot.kill()
        await self._reap(slot)
        code = slot.proc.returncode if slot.proc is not None else None
        finished = time.time()
        stdout, stderr = self._captured(slot)
        self.log.warning("pool.worker_crashed", job_id=record.spec.id, worker=slot.index, pid=pid, exit_code=code)
        self._retire(slot)
        return Result(job_id=record.spec.id, state="failed", error_type="WorkerCrashed",
                      error=f"worker process died (exit code {code}) while running the job",
                      exit_code=code, stdout=stdout, stderr=stderr, node=self.node_id,
                      attempts=record.attempts, submitted_at=record.submitted_at,
                      started_at=started, finished_at=finished, retry=True)

    def _result(self, record: JobRecord, reply: WorkerReply) -> Result:
        state = "succeeded" if reply.state == "succeeded" else "failed"
        value_format = reply.value_format if reply.value_format in ("pickle", "json") else "none"
        return Result(job_id=record.spec.id, state=state, value=reply.value, value_format=value_format,
                      error=reply.error, error_type=reply.error_type, traceback=reply.traceback,
                      stdout=reply.stdout, stderr=reply.stderr, exit_code=reply.exit_code,
                      node=self.node_id, attempts=record.attempts, submitted_at=record.submitted_at,
                      started_at=reply.started_at, finished_at=reply.finished_at)
