"""Small importable job functions for tests, the demo and the benchmarks.

Use them as `call` targets ("jobgrid.examples:add") or pickle them (by reference).
"""

from __future__ import annotations

import os
import time
from typing import Any


def noop(x: Any = None) -> Any:
    """Return `x` unchanged."""
    return x


def add(a: Any, b: Any) -> Any:
    return a + b


def square(x: Any) -> Any:
    return x * x


def sleep(seconds: float, value: Any = None) -> Any:
    """Sleep (wall clock, no CPU) and return `value`."""
    time.sleep(seconds)
    return value


def busy(ms: float) -> float:
    """Burn `ms` milliseconds of this thread's CPU time; returns the CPU ms actually spent."""
    start = time.thread_time()
    end = start + ms / 1000.0
    while time.thread_time() < end:
        pass
    return (time.thread_time() - start) * 1000.0


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def crash() -> None:
    """Kill the worker process outright (no cleanup, no reply)."""
    os._exit(13)


def hang() -> None:
    """Never return (until the job's timeout kills the worker)."""
    while True:
        time.sleep(3600)


def echo_env(name: str) -> str | None:
    return os.environ.get(name)
