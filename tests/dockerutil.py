"""Shared by the Docker tests: they need a running Docker Engine (`make test` starts one) and FAIL
without it, unless JOBGRID_SKIP_DOCKER=1 is set, in which case they are skipped."""

from __future__ import annotations

import os

import pytest

from harness.errors import DockerUnavailable
from harness.images import docker_client


def docker_unavailable(msg: object) -> None:
    """Fail (or, with JOBGRID_SKIP_DOCKER=1, skip) naming what is missing and what to run."""
    if os.environ.get("JOBGRID_SKIP_DOCKER") == "1":
        pytest.skip(f"JOBGRID_SKIP_DOCKER=1 and {msg}")
    pytest.fail(f"{msg}\n(run `sudo scripts/ensure-docker.sh`, or set JOBGRID_SKIP_DOCKER=1 to skip)",
                pytrace=False)


def connect():
    """A Docker SDK client, or a clear failure."""
    try:
        return docker_client()
    except DockerUnavailable as exc:
        docker_unavailable(exc)
