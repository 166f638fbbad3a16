"""Shared fixtures: real node processes on loopback, torn down by the test that started them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import pytest

from harness.backend import wait_for as _wait_for
from harness.local import LocalCluster

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Make LocalClusters; every one made is stopped (processes and iptables rules) at teardown."""
    made: list[LocalCluster] = []

    def make(**kw) -> LocalCluster:
        kw.setdefault("exit_with_parent", True)  # a killed test run leaves no nodes behind
        c = LocalCluster(tmp_path / f"cluster{len(made)}", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def by_value(module_name: str) -> None:
    """Test modules are not importable in job processes: ship their functions by value."""
    cloudpickle.register_pickle_by_value(sys.modules[module_name])


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for iptables")


def wait_for(cond: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> object:
    """Wait on a condition with a deadline; a timeout fails the test naming what it waited for."""
    return _wait_for(cond, timeout, what, step=step, error=AssertionError)


# ---- Docker tests (tests/docker): one Engine connection and one node-image build per session ----
@pytest.fixture(scope="session")
def docker():
    from dockerutil import connect
    cli = connect()
    yield cli
    cli.close()


@pytest.fixture(scope="session")
def node_image(docker):
    """The node image built from the current source tree (never a stale one left by an earlier run)."""
    from harness.images import ensure_images
    return ensure_images(docker)  # one build for the whole session; the layer cache keeps it quick
