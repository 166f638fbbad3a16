"""The node image, built for real: Debian base from debootstrap + the project's Dockerfile.

Needs a running Docker Engine (`sudo scripts/ensure-docker.sh`). Without one these tests
FAIL, unless JOBGRID_SKIP_DOCKER=1 is set, in which case they are skipped.
"""

from __future__ import annotations

import uuid

import pytest

from harness.images import BASE_TAG, NODE_TAG, build_base_image, build_node_image

from dockerutil import connect

pytestmark = pytest.mark.docker

LABEL = "jobgrid.test=test_images"


@pytest.fixture(scope="module")
def client():
    cli = connect()
    yield cli
    # Remove anything this module started and left behind (normally nothing).
    for c in cli.containers.list(all=True, filters={"label": LABEL}):
        c.remove(force=True, v=True)
    cli.close()


@pytest.fixture(scope="module")
def node_image(client):
    base = build_base_image(client, BASE_TAG)  # reused when it already exists
    return build_node_image(client, base=base, tag=NODE_TAG)


def run(client, image, *, entrypoint=None, command=None, user=None):
    """Run a container with no network; return (exit code, output). Always removed."""
    kwargs = {"user": user} if user is not None else {}
    container = client.containers.create(
        image,
        command=command,
        entrypoint=entrypoint,
        network_mode="none",
        labels={"jobgrid.test": "test_images"},
        name=f"jobgrid-test-{uuid.uuid4().hex[:8]}",
        **kwargs,
    )
    try:
        container.start()
        status = container.wait(timeout=120)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return status["StatusCode"], output
    finally:
        container.remove(force=True, v=True)


def test_runs_as_non_root(client, node_image):
    code, out = run(client, node_image, entrypoint=["id", "-u"])
    assert code == 0, out
    assert out.strip() != "0", "the node image must not run as root"
    code, out = run(client, node_image, entrypoint=["id", "-un"])
    assert out.strip() == "jobgrid"


def test_data_dir_owned_by_jobgrid(client, node_image):
    code, out = run(client, node_image, entrypoint=["stat", "-c", "%U %a", "/data"])
    assert code == 0, out
    assert out.split()[0] == "jobgrid", out


def test_package_installed_offline(client, node_image):
    code, out = run(client, node_image, entrypoint=["python", "-c", "import jobgrid, sys; print(sys.prefix)"])
    assert code == 0, out
    assert out.strip() == "/opt/jobgrid", out


def test_jobgrid_help(client, node_image):
    code, out = run(client, node_image, entrypoint=["jobgrid"], command=["--help"])
    assert code == 0, f"`jobgrid --help` failed in the image:\n{out}"
    assert "server" in out


def test_image_config(client, node_image):
    config = client.images.get(node_image).attrs["Config"]
    health = config.get("Healthcheck") or {}
    test = health.get("Test") or []
    assert test and test[0] in ("CMD", "CMD-SHELL"), f"no HEALTHCHECK in {node_image}: {health}"
    assert "/healthz" in " ".join(test)
    assert config["Entrypoint"] == ["jobgrid", "server"]
    assert config["User"] == "jobgrid"
    assert "8000/tcp" in (config.get("ExposedPorts") or {})
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["JOBGRID_DATA_DIR"] == "/data"
    assert env["JOBGRID_PORT"] == "8000"
    assert env["JOBGRID_HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/jobgrid/bin:")
