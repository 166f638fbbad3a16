"""One exception tree for jobgrid.

    JobgridError
    ├── ConfigError            bad settings or command-line input (ValueError too)
    ├── StorageError           the node's SQLite store cannot be opened or written
    ├── ProtocolError          a message failed validation (carries the HTTP status)
    │   └── Unavailable        a node cannot take the request now (503 + Retry-After)
    ├── GridUnavailable        no node could be reached (ConnectionError too)
    │   └── PeerError          node side (node/peers.py): a peer unreachable or answering an error
    │       ├── PeerRefused    it refused this message (4xx)
    │       │   └── PeerFenced 409: it follows a newer ring, which comes with the error
    │       └── PeerBusy       429/503: it cannot take it now
    ├── JobNotFound            no node knows that job id (KeyError too)
    ├── JobTimeout             a result did not arrive in time (TimeoutError too)
    ├── JobCancelled           the job was cancelled before it finished
    └── JobFailed              the job ran and raised, exited non-zero or was killed
        └── RemoteError        the re-raised form of an exception that could not be unpickled
"""

from __future__ import annotations


class JobgridError(Exception):
    """Root of every error jobgrid raises on purpose."""


class ConfigError(JobgridError, ValueError):
    """A setting or argument is invalid; the message says which and why."""


class StorageError(JobgridError):
    """The node's store cannot be opened, read or written."""


class ProtocolError(JobgridError):
    """A request or peer message was malformed; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(ProtocolError):
    """This node cannot take the request now (no quorum, not a member, stopping, full)."""

    def __init__(self, message: str, status: int = 503, retry_after: float = 1.0) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class GridUnavailable(JobgridError, ConnectionError):
    """No node of the grid answered."""


class JobNotFound(JobgridError, KeyError):
    """No node knows the job id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "job not found"


class JobTimeout(JobgridError, TimeoutError):
    """The result did not arrive before the deadline."""


class JobCancelled(JobgridError):
    """The job was cancelled."""


class JobFailed(JobgridError):
    """The job ran and failed; `traceback` holds the remote traceback text."""

    def __init__(self, message: str, traceback: str | None = None, job_id: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback
        self.job_id = job_id


class RemoteError(JobFailed):
    """A job raised an exception that could not be rebuilt on the client."""
