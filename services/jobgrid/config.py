"""`jobgrid.toml`: node settings from a file. Precedence: flags > JOBGRID_* environment > file > defaults.

The file's values are applied as defaults of the environment variables, so one code path (cli.py's
env handling) reads both. Keys live at the top level or under a `[server]` table.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_FILE = "jobgrid.toml"
KEYS: dict[str, str] = {
    "port": "JOBGRID_PORT", "host": "JOBGRID_HOST", "advertise": "JOBGRID_ADVERTISE", "join": "JOBGRID_JOIN",
    "runners": "JOBGRID_RUNNERS", "replicas": "JOBGRID_REPLICAS", "data_dir": "JOBGRID_DATA_DIR",
    "log_level": "JOBGRID_LOG_LEVEL", "heartbeat_interval": "JOBGRID_HEARTBEAT_INTERVAL",
    "failure_timeout": "JOBGRID_FAILURE_TIMEOUT", "lease_ttl": "JOBGRID_LEASE_TTL",
    "job_timeout": "JOBGRID_JOB_TIMEOUT", "leave_timeout": "JOBGRID_LEAVE_TIMEOUT",
    "leave_grace": "JOBGRID_LEAVE_GRACE", "token_file": "JOBGRID_TOKEN_FILE",
    "peer_transport": "JOBGRID_PEER_TRANSPORT", "dial": "JOBGRID_DIAL",
    "force_new_cluster": "JOBGRID_FORCE_NEW_CLUSTER",
    "read_token_file": "JOBGRID_READ_TOKEN_FILE", "peer_secret_file": "JOBGRID_PEER_SECRET_FILE",
    "job_user": "JOBGRID_JOB_USER", "allow_kinds": "JOBGRID_ALLOW_KINDS", "allow_modules": "JOBGRID_ALLOW_MODULES",
    "max_pending_per_client": "JOBGRID_MAX_PENDING_PER_CLIENT", "header_timeout": "JOBGRID_HEADER_TIMEOUT",
    "max_streams_per_client": "JOBGRID_MAX_STREAMS_PER_CLIENT",
}


def load(path: str | os.PathLike | None) -> dict[str, Any]:
    """The settings in `path` (or ./jobgrid.toml if it exists; {} if not given and absent)."""
    p = Path(path) if path else Path(DEFAULT_FILE)
    if not p.exists():
        if path:
            raise ConfigError(f"--config {p}: no such file")
        return {}
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: {e}") from None
    table = data.get("server", data)
    unknown = sorted(set(table) - set(KEYS) - {"server"})
    if unknown:
        raise ConfigError(f"{p}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}")
    return {k: v for k, v in table.items() if k in KEYS}


def apply(settings: dict[str, Any], environ: dict[str, str] | None = None) -> None:
    """Set JOBGRID_* variables from the file where the environment does not already set them."""
    env = os.environ if environ is None else environ
    for key, value in settings.items():
        if isinstance(value, dict):  # dial = { "10.0.0.5:8000" = "127.0.0.1:21001" }
            value = ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):  # dial = ["10.0.0.5:8000=127.0.0.1:21001"]
            value = ",".join(map(str, value))
        env.setdefault(KEYS[key], str(value))
