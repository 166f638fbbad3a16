"""A job as the client sends it and gets it back: validated `JobSpec`s for the three kinds (a pickled
callable, a script, a `module:function` call) and the value a result stands for (`decode_value`).

Pure and synchronous: no IO beyond reading a script file, so both clients and the harness build
their jobs here, and a bad job is a `ConfigError` before anything is sent.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import msgspec

from ..errors import ConfigError, JobCancelled, JobFailed, RemoteError
from ..protocol import JobSpec, Result


@dataclass(frozen=True)
class ScriptOutput:
    """What a script job left behind."""

    exit_code: int
    stdout: str
    stderr: str


def new_job_id() -> str:
    return uuid.uuid4().hex


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


def pickle_spec(fn: Callable, args: Sequence, kwargs: dict, **opts: Any) -> JobSpec:
    """`fn(*args, **kwargs)` as a job: the callable and its arguments travel cloudpickled."""
    if not callable(fn):
        raise ConfigError(f"submit() needs a callable, got {type(fn).__name__}")
    name = opts.pop("name", None) or getattr(fn, "__qualname__", getattr(fn, "__name__", "job"))[:256]
    return build_spec("pickle", payload=cloudpickle.dumps((fn, tuple(args), dict(kwargs))), name=name, **opts)


def script_spec(path_or_source: str | os.PathLike, argv: Sequence[str] = (), **opts: Any) -> JobSpec:
    """A script run as `__main__` with `argv`: a path (a `PathLike`, or a one-line `*.py` string) or its source."""
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


def call_spec(target: str, args: Sequence, kwargs: dict, **opts: Any) -> JobSpec:
    """A call of `module:function` with JSON arguments: no code travels."""
    return build_spec("call", target=target, args=list(args), kwargs=dict(kwargs), **opts)


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
