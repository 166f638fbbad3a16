"""jobgrid: a lightweight distributed grid that runs Python jobs and withstands failure."""

from __future__ import annotations

from .client import AsyncClient, Client, JobFuture, ScriptOutput
from .errors import (
    ConfigError, GridUnavailable, JobCancelled, JobFailed, JobgridError, JobNotFound, JobTimeout, RemoteError,
)
from .executor import GridExecutor

__all__ = ["AsyncClient", "Client", "ConfigError", "GridExecutor", "GridUnavailable", "JobCancelled", "JobFailed",
           "JobFuture", "JobNotFound", "JobTimeout", "JobgridError", "RemoteError", "ScriptOutput"]
__version__ = "0.1.0"
