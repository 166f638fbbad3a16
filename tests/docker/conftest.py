"""Fixtures shared by the Docker tests: one Engine connection and one node-image build per session."""

from __future__ import annotations

import pytest

from harness.images import ensure_images

from dockerutil import connect


@pytest.fixture(scope="session")
def docker():
    cli = connect()
    yield cli
    cli.close()


@pytest.fixture(scope="session")
def node_image(docker):
    """The node image built from the current source tree (never a stale one left by an earlier run)."""
    return ensure_images(docker)  # one build for the whole session; the layer cache keeps it quick
