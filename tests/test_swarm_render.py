"""The harness's swarm backend without a swarm: what it changes in deploy/swarm/jobgrid-stack.yml before it
deploys it (harness.swarm_backend.render), and the links it accepts. The deployment itself is
tests/docker/test_swarm.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.cluster import pick_links
from harness.errors import HarnessError
from harness.swarm_backend import STACK_FILE, render


def rendered(tmp_path: Path) -> dict:
    return render(yaml.safe_load(STACK_FILE.read_text()), image="jobgrid-node:t", nodes=5, replicas=3, runners=1,
                  heartbeat=0.5, failure=2.0, leave_timeout=15, secret_dir=tmp_path, shared="jgsx-shared")


def test_render_keeps_the_stack_and_changes_only_what_the_harness_needs(tmp_path):
    original = yaml.safe_load(STACK_FILE.read_text())
    st = rendered(tmp_path)
    svc = st["services"]["node"]
    assert svc["image"] == "jobgrid-node:t" and svc["deploy"]["replicas"] == 5
    env = svc["environment"]
    assert env["JOBGRID_REPLICAS"] == "3" and env["JOBGRID_RUNNERS"] == "1" and env["JOBGRID_LEAVE_TIMEOUT"] == "15"
    assert svc["stop_grace_period"] == "25s"  # the leave timeout and room to exit
    # as written: the join script, the health check's test, one at a time stop-first, secrets as files
    assert svc["command"] == original["services"]["node"]["command"]
    assert svc["healthcheck"]["test"] == original["services"]["node"]["healthcheck"]["test"]
    update = svc["deploy"]["update_config"]
    assert update["parallelism"] == 1 and update["order"] == "stop-first"
    assert svc["secrets"] == original["services"]["node"]["secrets"]
    assert not {"JOBGRID_TOKEN", "JOBGRID_PEER_SECRET"} & set(env)
    # the harness's own: secrets from its files (made by the stack, removed with it), an internal network
    assert st["secrets"] == {n: {"file": str(tmp_path / n)} for n in ("jobgrid_token", "jobgrid_peer_secret")}
    assert st["networks"]["grid"]["internal"] is True and st["networks"]["grid"]["driver"] == "overlay"
    assert {"type": "volume", "source": "shared", "target": "/shared"} in svc["volumes"]
    assert st["volumes"]["data"] == original["volumes"]["data"]  # a volume per slot, as written


def test_the_swarm_backend_has_direct_links_only():
    assert pick_links(None, backend="swarm") == "direct"
    with pytest.raises(HarnessError, match="direct links only"):
        pick_links("toxiproxy", backend="swarm")
    with pytest.raises(HarnessError, match="direct links only"):
        pick_links(None, needs_proxies=True, backend="swarm")
