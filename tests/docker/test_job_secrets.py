"""In the node image, node and jobs run as one unprivileged account (`jobgrid`) and the credentials come in
environment variables: a job that hunts for the client token and the peer secret (test_hardening.hunt: its
environment, the node's /proc environ, cmdline, status, descriptors and memory) finds neither."""

from __future__ import annotations

import secrets

import pytest

import jobgrid
from test_hardening import hunt

pytestmark = pytest.mark.docker


def test_a_job_in_the_node_image_cannot_read_the_nodes_credentials(docker, node_image) -> None:
    from harness.docker_backend import DockerCluster
    c = DockerCluster(f"jgs{secrets.token_hex(3)}", image=node_image, replicas=1, runners=1)
    try:
        n = c.up(1, timeout=120)[0]
        with jobgrid.Client(n.url, token=c.token, timeout=60) as client:
            assert client.submit(hunt, c.token).result(120) == []
            assert client.submit(hunt, c.peer_secret).result(120) == []
            # the hunt does look in the right place: the node's command line is found (it is public)
            assert any(x.endswith("/cmdline") for x in client.submit(hunt, "server").result(120))
    finally:
        c.stop()
