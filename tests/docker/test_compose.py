"""compose/docker-compose.yml, run for real with the compose tool (v2 plugin or v1 docker-compose).

The grid runs on an `internal` network (tests/docker/compose-internal.yml replaces the default
override, so nothing is published: MACHINE.md's network rule) and is reached by node1's
container IP from the host. Needs Docker and a compose tool (`sudo scripts/ensure-docker.sh`
installs both). Without them this FAILS, unless JOBGRID_SKIP_DOCKER=1 (then it is skipped).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from jobgrid import Client, examples

from dockerutil import docker_unavailable

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
INTERNAL = Path(__file__).with_name("compose-internal.yml")



def compose_command() -> list[str]:
    """`docker compose` (v2) when it answers, else `docker-compose` (v1); fail clearly if neither."""
    if shutil.which("docker") is None:
        docker_unavailable("no docker CLI on PATH")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        docker_unavailable("the Docker Engine does not answer `docker info`")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker_unavailable("no compose tool: neither `docker compose` nor `docker-compose` is installed "
                 "(scripts/ensure-docker.sh installs docker-compose)")
    raise AssertionError("unreachable")


def _get(url: str, token: str, timeout: float = 5.0) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _leftovers(project: str) -> list[str]:
    found = []
    for kind, args in (("container", ["ps", "-a"]), ("network", ["network", "ls"]), ("volume", ["volume", "ls"])):
        out = subprocess.run(["docker", *args, "-q", "--filter", f"label=com.docker.compose.project={project}"],
                             capture_output=True, text=True, timeout=60).stdout.split()
        found += [f"{kind} {x}" for x in out]
    return found


def test_compose_grid_of_three_agrees_and_runs_a_job(node_image):
    base = compose_command()

    project = f"jgtest{secrets.token_hex(4)}"
    token = secrets.token_hex(16)
    env = {**os.environ, "JOBGRID_TOKEN": token, "JOBGRID_PEER_SECRET": "peer-" + token, "BASE_IMAGE": "jobgrid-base:bookworm",
           "JOBGRID_REPLICAS": "2", "JOBGRID_LOG_LEVEL": "info"}
    cmd = [*base, "-p", project, "-f", str(COMPOSE_FILE), "-f", str(INTERNAL)]

    def compose(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=timeout)

    try:
        up = compose("up", "-d", "--no-build")
        assert up.returncode == 0, f"compose up failed:\n{up.stdout}\n{up.stderr}"

        net = f"{project}_grid"
        internal = subprocess.run(["docker", "network", "inspect", "-f", "{{.Internal}}", net],
                                  capture_output=True, text=True, timeout=30).stdout.strip()
        assert internal == "true", f"network {net} must be internal, got {internal!r}"

        def addresses() -> dict[str, str]:
            ips = {}
            for svc in ("node1", "node2", "node3"):
                cid = compose("ps", "-q", svc).stdout.strip()
                assert cid, f"no container for {svc}"
                info = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True,
                                                 timeout=30).stdout)[0]
                ports = info["NetworkSettings"]["Ports"]
                assert not any(ports.get(p) for p in ports), f"{svc} publishes a port: {ports}"
                ips[svc] = info["NetworkSettings"]["Networks"][net]["IPAddress"]
            return ips

        def agreed_ring(ips: dict[str, str]) -> dict:
            """All three nodes answer /servers with the same 3-member ring at the same epoch."""
            deadline, last = time.monotonic() + 90, None
            while time.monotonic() < deadline:
                try:
                    views = [_get(f"http://{ip}:8000/servers", token) for ip in ips.values()]
                    rings = {(v["epoch"], tuple(sorted((s["id"], s["location"]) for s in v["servers"])))
                             for v in views}
                    last = views
                    if len(rings) == 1 and len(views[0]["servers"]) == 3 \
                            and all(s["status"] == "alive" for s in views[0]["servers"]) \
                            and all(v.get("serving", True) for v in views):
                        return views[0]
                except OSError as exc:
                    last = exc
                time.sleep(0.5)
            logs = compose("logs", "--tail", "20").stdout
            pytest.fail(f"nodes did not agree on a ring of 3 within 90 s; last: {last}\n{logs}")

        ips = addresses()
        ring = agreed_ring(ips)
        assert {s["ip"] for s in ring["servers"]} == {"node1", "node2", "node3"}

        with Client(f"http://{ips['node1']}:8000", token=token, timeout=60) as client:
            futs = [client.submit(examples.add, i, 100) for i in range(6)]
            assert [f.result(timeout=90) for f in futs] == [100 + i for i in range(6)]
            done = {f.job_id: client.wait_result(f.job_id, timeout=30) for f in futs}

        # `compose down` then `up` with the volumes kept: the nodes come back by themselves (each finds the
        # others from the ring it saved), as the same nodes (new incarnations after their graceful leave), and serve the results recorded before
        down = compose("down")
        assert down.returncode == 0, f"compose down failed:\n{down.stdout}\n{down.stderr}"
        up = compose("up", "-d", "--no-build")
        assert up.returncode == 0, f"compose up (second) failed:\n{up.stdout}\n{up.stderr}"
        ips = addresses()
        again = agreed_ring(ips)
        # `compose down` sends SIGTERM: each node left the ring gracefully (the last one kept everything), so
        # each comes back as a new incarnation of itself (same base id, `-N` after it) at the same service name
        def base(i: str) -> str:
            return i.split("-")[0]
        assert {(s["ip"], base(s["id"])) for s in again["servers"]} == \
            {(s["ip"], base(s["id"])) for s in ring["servers"]}, (ring, again)
        with Client([f"http://{ip}:8000" for ip in ips.values()], token=token, timeout=60) as client:
            for jid, res in done.items():
                back = client.wait_result(jid, timeout=60)
                assert (back.node, back.finished_at, back.value) == (res.node, res.finished_at, res.value)
            assert client.submit(examples.add, 1, 2).result(timeout=90) == 3
    finally:
        down = compose("down", "-v", "--remove-orphans")
        left = _leftovers(project)
    assert down.returncode == 0, f"compose down failed:\n{down.stdout}\n{down.stderr}"
    assert not left, f"compose down -v left behind: {left}"
