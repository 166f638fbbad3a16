"""The job process: `python -P -u -m jobgrid.worker --rfd R --wfd W --workdir DIR --capture DIR`.

A warm worker loops forever: read one `WorkerJob` frame from fd R, run it with
stdout/stderr redirected at the file-descriptor level into capture files, write
one `WorkerReply` frame to fd W. It exits on EOF. Frames are a 4-byte
big-endian length followed by a msgpack message.

The parent (`jobgrid.node.pool`) kills the process on timeout and respawns it
on a crash; it reads the capture files itself when no reply arrives, so the
output of a crashed or hung job is not lost.

Nothing in here imports the rest of jobgrid, so a worker starts fast.
"""

from __future__ import annotations

import argparse
import builtins
import faulthandler
import importlib
import linecache
import os
import struct
import sys
import time
import traceback as tb_mod
import types
from pathlib import Path
from typing import Any

import msgspec

OUTPUT_LIMIT = 1 << 20            # keep at most the last 1 MiB of stdout and of stderr
VALUE_LIMIT = 64 * 1024 * 1024    # protocol.Payload max_length
TRACEBACK_LIMIT = 1 << 20
ERROR_LIMIT = 64 * 1024
ERROR_TYPE_LIMIT = 256
MAX_FRAME = 512 * 1024 * 1024     # sanity bound for one frame in either direction

_HEADER = struct.Struct(">I")
# --allow-modules of the node (JOBGRID_ALLOW_MODULES): call targets must be defined in one of them
ALLOWED_MODULES: tuple[str, ...] = ()


# ---- messages ---------------------------------------------------------------------------------

class WorkerReady(msgspec.Struct, tag="ready"):
    """Sent once by the child after start-up: it is warm and waits for jobs."""

    pid: int


class WorkerJob(msgspec.Struct, tag="job"):
    """Parent -> child: what to run (the JobSpec fields the child needs)."""

    job_id: str
    kind: str
    attempt: int = 0
    payload: bytes | None = None
    source: str | None = None
    argv: list[str] = []
    target: str | None = None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    name: str = ""


class WorkerReply(msgspec.Struct, tag="reply"):
    """Child -> parent: the outcome; the parent turns it into a protocol.Result."""

    job_id: str
    state: str                     # "succeeded" | "failed"
    value: bytes | None = None
    value_format: str = "none"     # "pickle" | "json" | "none"
    error: str | None = None
    error_type: str | None = None
    traceback: str | None = None
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    started_at: float = 0.0
    finished_at: float = 0.0


FromChild = WorkerReady | WorkerReply


def encode_frame(msg: msgspec.Struct) -> bytes:
    body = msgspec.msgpack.encode(msg)
    return _HEADER.pack(len(body)) + body


def capture_paths(capture_dir: Path) -> tuple[Path, Path]:
    """Where a worker writes the current job's stdout and stderr (shared with the parent)."""
    return capture_dir / "stdout", capture_dir / "stderr"


def read_tail(path: str | os.PathLike[str], limit: int = OUTPUT_LIMIT) -> str:
    """The last `limit` bytes of a file, decoded leniently; "" if it does not exist."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            data = f.read(limit)
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")


# ---- helpers ----------------------------------------------------------------------------------

def qualified_name(cls: type) -> str:
    """module.Qualname, bare for builtins ("ValueError", "mypkg.errors.MyError")."""
    module = getattr(cls, "__module__", None) or ""
    qual = getattr(cls, "__qualname__", None) or cls.__name__
    name = qual if module in ("builtins", "") else f"{module}.{qual}"
    return name[:ERROR_TYPE_LIMIT]


def _safe_str(e: BaseException) -> str:
    try:
        return str(e)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not kill the worker
        return f"<unprintable {type(e).__name__}>"


def describe(e: BaseException) -> str:
    text = _safe_str(e)
    msg = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return _clip(msg, ERROR_LIMIT)


def _clip(text: str, limit: int, *, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    return text[-limit:] if tail else text[:limit]


def format_tb(e: BaseException) -> str:
    """The traceback text, without the worker's own frames at the top."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        text = "".join(tb_mod.format_exception(type(e), e, tb))
    except BaseException:  # noqa: BLE001
        text = f"{describe(e)}\n(traceback could not be formatted)\n"
    return _clip(text, TRACEBACK_LIMIT, tail=True)


class _JobError(Exception):
    """A failure found by the worker itself (bad payload, unserializable result)."""

    def __init__(self, error: str, error_type: str, traceback: str | None = None) -> None:
        super().__init__(error)
        self.error = _clip(error, ERROR_LIMIT)
        self.error_type = error_type[:ERROR_TYPE_LIMIT]
        self.traceback = traceback


def _failure_from(e: BaseException, prefix: str = "") -> _JobError:
    return _JobError(prefix + describe(e), qualified_name(type(e)), format_tb(e))


# ---- the three kinds --------------------------------------------------------------------------

def _run_pickle(job: WorkerJob, reply: WorkerReply) -> None:
    import cloudpickle

    if job.payload is None:
        raise _JobError("pickle job has no payload", "InvalidJob")
    try:
        fn, args, kwargs = cloudpickle.loads(job.payload)
    except BaseException as e:  # noqa: BLE001
        raise _failure_from(e, "cannot unpickle the job payload: ") from None
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt from a job are failures too
        reply.state = "failed"
        reply.error = describe(e)
        reply.error_type = qualified_name(type(e))
        reply.traceback = format_tb(e)
        try:
            blob = cloudpickle.dumps(e)
            cloudpickle.loads(blob)  # only ship what a client can load back
            if len(blob) <= VALUE_LIMIT:
                reply.value, reply.value_format = blob, "pickle"
        except BaseException:  # noqa: BLE001
            pass
        return
    try:
        blob = cloudpickle.dumps(result)
    except BaseException as e:  # noqa: BLE001
        raise _JobError(f"the job returned a {type(result).__qualname__} value that cannot be pickled: "
                        f"{describe(e)}", "UnpicklableResult", format_tb(e)) from None
    if len(blob) > VALUE_LIMIT:
        raise _JobError(f"the pickled result is {len(blob)} bytes, over the {VALUE_LIMIT} byte limit",
                        "ResultTooLarge")
    reply.state, reply.value, reply.value_format = "succeeded", blob, "pickle"


def _resolve(target: str) -> Any:
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise _JobError(f"invalid call target {target!r}: expected 'package.module:function'", "InvalidJob")
    try:
        obj: Any = importlib.import_module(module_name)
    except BaseException as e:  # noqa: BLE001 - import may raise anything, even SystemExit
        raise _failure_from(e, f"cannot import module {module_name!r} for target {target!r}: ") from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise _failure_from(e, f"cannot resolve target {target!r}: ") from None
    if not callable(obj):
        raise _JobError(f"target {target!r} is a {type(obj).__qualname__}, not callable", "InvalidJob")
    home = getattr(obj, "__module__", None) or ""  # not what an allowed module imported (`from os import system`)
    if ALLOWED_MODULES and not any(home == m or home.startswith(m + ".") for m in ALLOWED_MODULES):
        raise _JobError(f"target {target!r} is defined in {home!r}, outside the allowed modules", "TargetNotAllowed")
    return obj


def _run_call(job: WorkerJob, reply: WorkerReply) -> None:
    if not job.target:
        raise _JobError("call job has no target", "InvalidJob")
    fn = _resolve(job.target)
    try:
        result = fn(*job.args, **job.kwargs)
    except BaseException as e:  # noqa: BLE001
        raise _failure_from(e) from None
    try:
        blob = msgspec.json.encode(result)
    except BaseException as e:  # noqa: BLE001
        raise _JobError(f"the job returned a {type(result).__qualname__} value that cannot be encoded "
                        f"as JSON: {describe(e)}", "UnserializableResult") from None
    if len(blob) > VALUE_LIMIT:
        raise _JobError(f"the JSON result is {len(blob)} bytes, over the {VALUE_LIMIT} byte limit",
                        "ResultTooLarge")
    reply.state, reply.value, reply.value_format = "succeeded", blob, "json"


def _run_script(job: WorkerJob, reply: WorkerReply, workdir: Path) -> None:
    if job.source is None:
        raise _JobError("script job has no source", "InvalidJob")
    filename = job.name or "<jobgrid-script>"
    sys.argv = [job.name or "script", *job.argv]
    sys.path.insert(0, str(workdir))
    # Let tracebacks show the script's lines (mtime None: linecache.checkcache keeps it).
    linecache.cache[filename] = (len(job.source), None, job.source.splitlines(True), filename)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=filename, __builtins__=builtins, __cached__=None)
    old_main = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    code = 0
    try:
        try:
            compiled = compile(job.source, filename, "exec", dont_inherit=True)
            exec(compiled, main.__dict__)
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:  # sys.exit("message"): like Python, print it and exit 1
                print(e.code, file=sys.stderr)
                code = 1
            if code != 0:
                reply.error = f"script exited with code {code}"
                reply.error_type = "SystemExit"
        except BaseException as e:  # noqa: BLE001
            code = 1
            reply.error = describe(e)
            reply.error_type = qualified_name(type(e))
            reply.traceback = format_tb(e)
            try:
                sys.stderr.write(reply.traceback)
            except BaseException:  # noqa: BLE001
                pass
    finally:
        linecache.cache.pop(filename, None)
        if old_main is not None:
            sys.modules["__main__"] = old_main
    reply.exit_code = code
    reply.state = "succeeded" if code == 0 else "failed"


# ---- one job, isolated ------------------------------------------------------------------------

class Worker:
    def __init__(self, rfd: int, wfd: int, workdir: Path, capture_dir: Path) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.workdir = workdir
        self.out_path, self.err_path = capture_paths(capture_dir)
        capture_dir.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)

    # frames over the pipes (blocking; this process does nothing else)
    def read_exactly(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(self.rfd, min(n - len(buf), 1 << 20))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def read_job(self) -> WorkerJob | None:
        header = self.read_exactly(_HEADER.size)
        if header is None:
            return None
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes is too large")
        body = self.read_exactly(size)
        if body is None:
            return None
        return msgspec.msgpack.decode(body, type=WorkerJob)

    def send(self, msg: msgspec.Struct) -> None:
        view = memoryview(encode_frame(msg))
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]

    def _open_capture(self, path: Path) -> int:
        # A fresh inode per job: a background process left over from an earlier job keeps
        # writing into the old, unlinked file and not into this job's output.
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _enter_workdir(self) -> None:
        try:
            os.chdir(self.workdir)
        except OSError:
            self.workdir.mkdir(parents=True, exist_ok=True)
            os.chdir(self.workdir)

    def run(self, job: WorkerJob) -> WorkerReply:
        reply = WorkerReply(job_id=job.job_id, state="failed")
        saved_argv, saved_path = list(sys.argv), list(sys.path)
        saved_env = dict(os.environ)
        saved_streams = (sys.stdin, sys.stdout, sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        out_fd, err_fd = self._open_capture(self.out_path), self._open_capture(self.err_path)
        saved_1, saved_2 = os.dup(1), os.dup(2)
        try:
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            os.environ["JOBGRID_JOB_ID"] = job.job_id
            os.environ["JOBGRID_ATTEMPT"] = str(job.attempt)
            self._enter_workdir()
            reply.started_at = time.time()
            try:
                if job.kind == "pickle":
                    _run_pickle(job, reply)
                elif job.kind == "call":
                    _run_call(job, reply)
                elif job.kind == "script":
                    _run_script(job, reply, self.workdir)
                else:
                    raise _JobError(f"unknown job kind {job.kind!r}", "InvalidJob")
            except _JobError as e:
                reply.state, reply.value, reply.value_format = "failed", None, "none"
                reply.error, reply.error_type, reply.traceback = e.error, e.error_type, e.traceback
            reply.finished_at = time.time()
        finally:
            sys.stdin, sys.stdout, sys.stderr = saved_streams
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except BaseException:  # noqa: BLE001
                    pass
            os.dup2(saved_1, 1)
            os.dup2(saved_2, 2)
            for fd in (saved_1, saved_2, out_fd, err_fd):
                os.close(fd)
            sys.argv = saved_argv
            sys.path[:] = saved_path
            os.environ.clear()
            os.environ.update(saved_env)
            self._enter_workdir()
        reply.stdout = read_tail(self.out_path)
        reply.stderr = read_tail(self.err_path)
        return reply

    def serve(self) -> None:
        self._enter_workdir()
        self.send(WorkerReady(pid=os.getpid()))
        while True:
            job = self.read_job()
            if job is None:
                return
            try:
                reply = self.run(job)
            except BaseException as e:  # noqa: BLE001 - report worker trouble as a failed job
                reply = WorkerReply(job_id=job.job_id, state="failed", error=describe(e),
                                    error_type=qualified_name(type(e)), traceback=format_tb(e),
                                    finished_at=time.time())
            self.send(reply)


def _become(user: str) -> None:
    """Drop to the job account (`--user UID:GID`): no supplementary groups, its gid, its uid, irrevocably."""
    uid, gid = (int(x) for x in user.split(":"))
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobgrid.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--rfd", type=int, required=True, help="fd to read job frames from")
    parser.add_argument("--wfd", type=int, required=True, help="fd to write reply frames to")
    parser.add_argument("--workdir", type=Path, required=True, help="the jobs' working directory")
    parser.add_argument("--capture", type=Path, required=True, help="directory for stdout/stderr capture files")
    parser.add_argument("--user", help="UID:GID to become before anything else (the node runs as root)")
    opts = parser.parse_args(argv)
    if opts.user:
        _become(opts.user)
    global ALLOWED_MODULES
    ALLOWED_MODULES = tuple(m for m in os.environ.pop("JOBGRID_ALLOW_MODULES", "").split(",") if m)
    # Subprocesses of jobs must not inherit the protocol pipes (a leftover child holding the
    # write end would hide our death from the parent).
    os.set_inheritable(opts.rfd, False)
    os.set_inheritable(opts.wfd, False)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(encoding="utf-8", errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
    faulthandler.enable()  # a segfault's Python traceback lands in the job's captured stderr
    import cloudpickle  # noqa: F401 - warm: pay the import before the first job

    worker = Worker(opts.rfd, opts.wfd, opts.workdir.resolve(), opts.capture.resolve())
    code = 0
    try:
        worker.serve()
    except BrokenPipeError:
        code = 0
    except BaseException:  # noqa: BLE001
        tb_mod.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    # os._exit: threads a job left behind must not keep a retired worker alive.
    os._exit(code)


if __name__ == "__main__":
    main()
