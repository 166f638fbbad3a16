"""structlog set-up: JSON lines when not on a terminal, readable lines on one."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", json: bool | None = None) -> None:
    if level not in _LEVELS:
        from .errors import ConfigError
        raise ConfigError(f"--log-level must be one of {', '.join(_LEVELS)}, got {level!r}")
    if json is None:
        json = not sys.stderr.isatty()
    processors = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=_LEVELS[level] if level == "debug" else logging.WARNING, stream=sys.stderr)


# ---- causal ids (dask's stimulus_id): every request and job transition logs the `cause` that led to it ----
CAUSE_HEADER = "X-Jobgrid-Cause"
_CAUSE_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def new_cause(prefix: str = "") -> str:
    """A short random id naming one stimulus: a request, a lease batch, a report, a sweep."""
    import secrets  # noqa: PLC0415

    return f"{prefix}{secrets.token_hex(4)}"


def valid_cause(raw: str | None) -> str | None:
    """A cause from the wire if it is short and plain (it lands in every log line), else None."""
    if raw and len(raw) <= 64 and all(c in _CAUSE_OK for c in raw):
        return raw
    return None


def bind_cause(cause: str | None = None, prefix: str = "") -> str:
    """Bind `cause` (a new one when None) for the rest of this task's log lines; returns it."""
    cause = cause or new_cause(prefix)
    structlog.contextvars.bind_contextvars(cause=cause)
    return cause


def current_cause() -> str | None:
    return structlog.contextvars.get_contextvars().get("cause")
