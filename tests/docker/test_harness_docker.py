"""The harness scenarios on the Docker backend: real containers on an internal bridge network.

Same scenarios as tests/test_harness_local.py (kill 2 of 5 with R=3, halves partition then heal,
pause longer than the failure timeout, kill then restart on the same volume, and the six Toxiproxy
scenarios with every link through a Toxiproxy container), plus `harness`'s own clean-up: after every
test nothing labelled for its cluster remains (containers, network, volumes).

Needs a running Docker Engine (`sudo scripts/ensure-docker.sh`); without one these tests FAIL,
unless JOBGRID_SKIP_DOCKER=1 is set, in which case they are skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from harness import scenarios
from harness_checks import assert_outcome, blackhole_then_partitions, flapping, slow_links_and_client_reset

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.docker

LABEL = "jobgrid.harness"


def leftovers(docker, name: str) -> list[str]:
    flt = {"label": f"{LABEL}={name}"}
    return ([c.name for c in docker.containers.list(all=True, filters=flt)]
            + [n.name for n in docker.networks.list(filters=flt)]
            + [v.name for v in docker.volumes.list(filters=flt)])


@pytest.fixture
def docker_cluster(docker, node_image):
    from harness.docker_backend import DockerCluster
    made = []

    def make(**kw):
        c = DockerCluster(f"jgt{secrets.token_hex(3)}", image=node_image, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
        assert leftovers(docker, c.name) == [], "harness left containers, networks or volumes behind"


def _up(make_cluster, links="direct"):
    c = make_cluster(replicas=3, runners=1, links=links)
    c.up(5, timeout=120)
    return c


def test_docker_network_is_internal_and_reachable(docker_cluster, docker):
    c = docker_cluster(replicas=1, runners=1)
    (n,) = c.up(1, timeout=120)
    net = docker.networks.get(c.network)
    assert net.attrs["Internal"] is True
    assert c.healthy(n)  # the host reaches the node at its address on the internal bridge
    assert c.get(n, "/state")["id"] == n.node_id
    c.stop()
    c.stop()  # safe twice
    assert leftovers(docker, c.name) == []


def test_docker_kill_two_of_five(docker_cluster):
    assert_outcome(scenarios.kill_two(_up(docker_cluster)))


def test_docker_partition_halves_then_heal(docker_cluster):
    c = _up(docker_cluster)
    assert_outcome(scenarios.partition_halves(c))
    c.wait_converged(60)
    for n in c.nodes:  # heal left the JOBGRID chains empty
        code, out = c._exec(n, "iptables", "-S", "JOBGRID")
        assert "DROP" not in out


def test_docker_pause_longer_than_failure_timeout(docker_cluster):
    assert_outcome(scenarios.pause_one(_up(docker_cluster)))


def test_docker_kill_then_restart_keeps_volume(docker_cluster):
    c = _up(docker_cluster)
    out = scenarios.kill_restart(c)
    assert_outcome(out)
    assert len(c.live()) == 5


# ---- every link through a Toxiproxy container ------------------------------------------------------------
# Scenarios that leave the grid healed and converged share one cluster.
def test_docker_blackhole_then_partitions_via_toxiproxy_and_iptables(docker_cluster):
    blackhole_then_partitions(_up(docker_cluster, "toxiproxy"), iptables=True)


def test_docker_slow_successor_big_jobs_on_a_slow_owner_and_a_client_reset(docker_cluster):
    slow_links_and_client_reset(_up(docker_cluster, "toxiproxy"))


def test_docker_flapping_link_loses_nothing(docker_cluster):
    out = flapping(_up(docker_cluster, "toxiproxy"))
    print(f"flapping link (docker): {out.fault['flips']} flips, {out.ring_changes} ring changes")


def test_docker_cli_latency_shows_in_round_trips(docker, node_image, tmp_path):
    """`harness up --nodes 5`, `harness chaos --latency 200ms --node n2`: submissions measure the delay;
    `harness status` lists the toxics; `harness heal` removes them; `harness down` removes everything."""
    env = {**os.environ, "HARNESS_STATE_DIR": str(tmp_path / ".harness"), "COLUMNS": "200",
           "JOBGRID_NODE_IMAGE": node_image}

    def harness(*args, check=True):
        r = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300)
        assert not check or r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r.stdout

    harness("up", "--nodes", "5", "--backend", "docker", "--links", "toxiproxy", "--runners", "1")
    name = json.loads((tmp_path / ".harness" / "state.json").read_text())["name"]
    try:
        clean = _p50(harness("submit", "--jobs", "40", "--rate", "20"))
        assert "latency 200 ms on n2's links" in harness("chaos", "--latency", "200ms", "--node", "n2")
        status = harness("status")
        assert "n1->n2" in status and "latency=200" in status
        slow = _p50(harness("submit", "--jobs", "40", "--rate", "20"))
        # 3 of 5 owners keep a copy on n2 (R=3), or are n2: most acks wait 2 x 200 ms on its links
        assert slow >= 400 and slow > clean, (clean, slow)
        harness("heal")
        assert "no toxics" in harness("status")
    finally:
        harness("down", check=False)
    assert leftovers(docker, name) == []


def _p50(out: str) -> float:
    for line in out.splitlines():
        if "submit latency p50" in line:
            return float(line.split("p50")[1].split("ms")[0])
    raise AssertionError(out)
