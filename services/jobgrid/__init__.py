"""jobgrid: a lightweight distributed grid that runs Python jobs and withstands failure.

The names below are loaded on first use, so `import jobgrid` stays light: a job process
(`jobgrid.worker`) or a node (`jobgrid.node`) does not load the client, and a client loads no node code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError, GridUnavailable, JobCancelled, JobFailed, JobgridError, JobNotFound, JobTimeout, RemoteError,
)

if TYPE_CHECKING:
    from .client import AsyncClient, Client, JobFuture, ScriptOutput
    from .executor import GridExecutor

_LAZY = {"AsyncClient": ".client", "Client": ".client", "JobFuture": ".client", "ScriptOutput": ".client",
         "GridExecutor": ".executor"}
_SUBMODULES = frozenset({"client", "executor"})  # `jobgrid.client.X` after a bare `import jobgrid`, as before

__all__ = ["AsyncClient", "Client", "ConfigError", "GridExecutor", "GridUnavailable", "JobCancelled", "JobFailed",
           "JobFuture", "JobNotFound", "JobTimeout", "JobgridError", "RemoteError", "ScriptOutput"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobgrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
