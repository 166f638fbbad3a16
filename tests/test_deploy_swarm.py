"""deploy/swarm/jobgrid-stack.yml: it parses with Docker's own tools (`docker stack config`, and
docker-compose where installed), and the properties the grid relies on hold: joining through
tasks.<service>, the token as a Docker secret file, a volume per task slot, the health check, a stop grace
period matching the leave timeout, one-at-a-time stop-first updates, a non-root read-only container.

No swarm is started here (`docker swarm init` belongs to the swarm test of issue 15, still to come).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from jobgrid import config

from dockerutil import docker_unavailable

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "deploy" / "swarm" / "jobgrid-stack.yml"
NOT_SETTINGS = {"JOBGRID_SERVICE": "Swarm template: the service name, for tasks.<service>",
                "JOBGRID_SLOT": "Swarm template: the task slot; slot 1 may start the grid",
                "JOBGRID_JOIN_WAIT": "seconds a joiner waits for a healthy task"}


def unescape(x):
    """Compose's interpolation of a file with no ${VAR} left: `$$` is a literal `$`."""
    if isinstance(x, str):
        return x.replace("$$", "$")
    if isinstance(x, list):
        return [unescape(v) for v in x]
    if isinstance(x, dict):
        return {k: unescape(v) for k, v in x.items()}
    return x


def stack() -> dict:
    return yaml.safe_load(STACK.read_text())


def svc() -> dict:
    return stack()["services"]["node"]


def env() -> dict[str, str]:
    return {k: str(v) for k, v in svc()["environment"].items()}


def seconds(d: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", d)
    assert m and d, f"not a duration: {d!r}"
    return int(m[1] or 0) * 60 + int(m[2] or 0)


# ---- Docker's tools parse it -----------------------------------------------------------------------------
def _render(cmd: list[str]) -> dict:
    r = subprocess.run([*cmd], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "JOBGRID_NODE_IMAGE"})
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr}"
    return yaml.safe_load(r.stdout)


@pytest.mark.docker
def test_docker_tools_parse_the_stack_and_render_what_we_read():
    tools = []
    if shutil.which("docker") and subprocess.run(["docker", "stack", "config", "--help"], capture_output=True,
                                                 timeout=30).returncode == 0:
        tools.append(["docker", "stack", "config", "-c", str(STACK)])
    if shutil.which("docker-compose"):
        tools.append(["docker-compose", "-f", str(STACK), "config"])
    if not tools:
        docker_unavailable("neither `docker stack config` (Docker CLI 24+) nor docker-compose is installed")
    mine = unescape(svc())
    for cmd in tools:
        out = _render(cmd)["services"]["node"]
        # `$$` is a literal `$` (docker-compose v1 prints it escaped again), as the tests below assume
        assert unescape(out["command"]) == mine["command"], cmd
        assert out["image"] == "jobgrid-node:latest", cmd
        assert out["deploy"]["update_config"]["order"] == "stop-first", cmd
        assert {s["source"] for s in out["secrets"]} == {"jobgrid_token", "jobgrid_peer_secret"}, cmd


# ---- properties -----------------------------------------------------------------------------------------------
def test_one_replicated_service_on_an_overlay_network():
    s = stack()
    assert list(s["services"]) == ["node"]
    d = svc()["deploy"]
    assert d["mode"] == "replicated" and d["replicas"] >= 3
    assert s["networks"]["grid"]["driver"] == "overlay"
    assert svc()["networks"] == ["grid"]
    assert "ports" not in svc()  # nothing published by default (docs/deploy.md shows how, host mode)


def test_joins_through_tasks_dns_of_its_own_service():
    e = env()
    assert e["JOBGRID_SERVICE"] == "{{.Service.Name}}" and e["JOBGRID_SLOT"] == "{{.Task.Slot}}"
    script = unescape(svc()["command"])[0]
    assert 'peers="tasks.$JOBGRID_SERVICE"' in script
    assert 'export JOBGRID_JOIN="$peers:$JOBGRID_PORT"' in script
    assert svc()["entrypoint"] == ["/bin/sh", "-c"]


def test_the_token_and_peer_secret_are_docker_secret_files_never_environment_variables():
    e = env()
    assert not {"JOBGRID_TOKEN", "JOBGRID_PEER_SECRET", "JOBGRID_READ_TOKEN"} & set(e)
    secs = {s["source"]: s for s in svc()["secrets"]}
    assert set(secs) == {"jobgrid_token", "jobgrid_peer_secret"}
    for name, var in (("jobgrid_token", "JOBGRID_TOKEN_FILE"), ("jobgrid_peer_secret", "JOBGRID_PEER_SECRET_FILE")):
        sec = secs[name]
        assert stack()["secrets"][name] == {"external": True}
        assert e[var] == f"/run/secrets/{sec['target']}"
        assert sec["mode"] == 0o400 and sec["uid"] == sec["gid"] == svc()["user"].split(":")[0]


def test_a_volume_per_task_on_the_data_dir():
    mounts = {m["target"]: m for m in svc()["volumes"]}
    data = mounts[env()["JOBGRID_DATA_DIR"]]
    assert data["type"] == "volume"
    assert "{{.Task.Slot}}" in stack()["volumes"][data["source"]]["name"]


def test_health_check_is_healthz_on_the_node_port():
    hc = svc()["healthcheck"]
    assert hc["test"][0] == "CMD"
    assert f"http://127.0.0.1:{env()['JOBGRID_PORT']}/healthz" in " ".join(hc["test"])
    assert seconds(hc["start_period"]) >= 60  # a join may take the node's join timeout


def test_stop_grace_period_matches_the_leave_timeout():
    leave = float(env()["JOBGRID_LEAVE_TIMEOUT"])
    grace = seconds(svc()["stop_grace_period"])
    assert leave < grace <= leave + 15  # room to exit after the drain, not minutes more
    assert svc()["stop_signal"] == "SIGTERM"


def test_updates_and_rollbacks_one_at_a_time_stop_first():
    d = svc()["deploy"]
    for key in ("update_config", "rollback_config"):
        assert d[key]["parallelism"] == 1 and d[key]["order"] == "stop-first", key
    assert d["restart_policy"]["condition"] == "any"


def test_non_root_read_only_no_capabilities():
    s = svc()
    uid, gid = s["user"].split(":")
    assert int(uid) > 0 and int(gid) > 0
    assert s["read_only"] is True
    assert s["cap_drop"] == ["ALL"] and "cap_add" not in s
    writable = {m["target"] for m in s["volumes"] if not m.get("read_only")}
    assert writable == {env()["JOBGRID_DATA_DIR"], "/tmp"}


def test_every_jobgrid_variable_is_a_setting_the_node_reads():
    known = set(config.KEYS.values())
    for name in env():
        if name.startswith("JOBGRID_"):
            assert name in known or name in NOT_SETTINGS, f"{name}: not a node setting (typo?)"


# ---- the start script: who starts the grid, who waits, who joins -------------------------------------------
def run_start(tmp_path: Path, slot: str, resolvable: dict[str, str], wait: str = "120") -> subprocess.CompletedProcess:
    """The service's command under /bin/sh; `getent` answers only for `resolvable` (name -> address) and
    `jobgrid` prints what it was given: the node itself runs in the swarm test."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (bin_ / "jobgrid").write_text('#!/bin/sh\necho "args=$* join=${JOBGRID_JOIN:-none} advertise=$JOBGRID_ADVERTISE"\n')
    lines = "".join(f'  {name}) echo "{addr}  {name}"; exit 0 ;;\n' for name, addr in resolvable.items())
    (bin_ / "getent").write_text(f'#!/bin/sh\ncase "$2" in\n{lines}esac\nexit 2\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    e = {k: v for k, v in env().items()}
    e.update({"PATH": f"{bin_}:{os.environ['PATH']}", "HOSTNAME": "c0ffee", "JOBGRID_SERVICE": "jobgrid_node",
              "JOBGRID_SLOT": slot, "JOBGRID_JOIN_WAIT": wait})
    cmd = unescape(svc()["entrypoint"]) + unescape(svc()["command"])
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=30)


def test_slot_one_starts_the_grid_when_no_task_is_healthy(tmp_path):
    r = run_start(tmp_path, "1", {"c0ffee": "10.0.1.5"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "args=server join=none advertise=10.0.1.5"


def test_slot_one_joins_when_a_task_is_already_healthy(tmp_path):
    r = run_start(tmp_path, "1", {"c0ffee": "10.0.1.5", "tasks.jobgrid_node": "10.0.1.7"})
    assert r.stdout.strip() == "args=server join=tasks.jobgrid_node:8000 advertise=10.0.1.5", r.stderr


def test_other_slots_join_through_tasks_dns(tmp_path):
    r = run_start(tmp_path, "4", {"c0ffee": "10.0.1.9", "tasks.jobgrid_node": "10.0.1.5"})
    assert r.stdout.strip() == "args=server join=tasks.jobgrid_node:8000 advertise=10.0.1.9", r.stderr


def test_other_slots_give_up_clearly_when_no_task_becomes_healthy(tmp_path):
    r = run_start(tmp_path, "2", {"c0ffee": "10.0.1.9"}, wait="1")
    assert r.returncode == 1 and r.stdout == ""
    assert "no healthy task of jobgrid_node after 1 s" in r.stderr
