"""The grid on a real (one-host) Docker Swarm, deployed from deploy/swarm/jobgrid-stack.yml (issue 15).

Five replicas joining through tasks.<service>; a recorded workload runs throughout while the test scales the
service to 7 (two join) and to 4 (three leave), rolls a `docker service update --force` over every task
(one at a time, stop-first) and SIGKILLs one task's container (Swarm replaces it on the slot's volume).
The history is VALID (0 lost, 0 duplicated); every job counts its own runs in a SQLite file on a volume all
tasks share (harness/sidefx.py), so the test reports the re-runs each step caused and how long it took
(test-artifacts/swarm-steps.json; docs/deploy.md quotes them).

The swarm is this Engine's: made with `docker swarm init --advertise-addr 127.0.0.1` when it is not one yet
and left again afterwards only then. The stack, its secrets and volumes, and the gateway the host reaches the
overlay network through are removed in any case. Needs a running Docker Engine and root (a host route and
nsenter); without an Engine this FAILS, unless JOBGRID_SKIP_DOCKER=1 is set.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from pathlib import Path

import pytest

from harness import sidefx
from harness.backend import wait_for
from harness.history import HistoryRecorder, check, summary_line
from harness.swarm_backend import SwarmCluster
from harness.workload import run_workload
from jobgrid.client import build_spec

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
RATE = 6.0        # submissions per second, all through the test
JOB_SECONDS = 0.3  # each job's work: long enough that stops and kills catch some mid-run


def leftovers(docker, c: SwarmCluster) -> list[str]:
    names: list[str] = []
    if (docker.info().get("Swarm") or {}).get("ControlAvailable"):  # still a manager (the test did not leave)
        names += [s.name for s in docker.services.list(filters={"name": c.service})]
        names += [s.name for s in docker.secrets.list() if s.name.startswith(c.name)]
    for label in (f"com.docker.swarm.service.name={c.service}", f"jobgrid.swarm={c.name}"):
        names += [x["Names"][0] for x in docker.api.containers(all=True, filters={"label": label})]
    names += [n.name for n in docker.networks.list() if n.name.startswith(c.name)]
    names += [v.name for v in docker.volumes.list() if v.name.startswith(c.name)]
    return names


@pytest.fixture
def swarm(docker, node_image):
    if os.geteuid() != 0:
        pytest.fail("the swarm test needs root (a host route to the overlay network, nsenter)", pytrace=False)
    was_manager = (docker.info().get("Swarm") or {}).get("LocalNodeState") == "active"
    c = SwarmCluster(f"jgs{secrets.token_hex(3)}", image=node_image, replicas=3, runners=1, leave_timeout=15)
    try:
        yield c
    finally:
        c.stop()
        assert leftovers(docker, c) == [], "the swarm test left services, containers, networks, volumes or secrets"
        if not was_manager:
            assert (docker.info().get("Swarm") or {}).get("LocalNodeState") == "inactive", "the swarm was not left"


@pytest.mark.timeout(480)  # about 4 minutes here; the bound leaves room for a slow, shared machine
def test_swarm_stack_scale_rolling_update_and_kill_lose_nothing(swarm):
    c = swarm
    t0 = time.monotonic()
    c.up(5, timeout=180)
    steps = [{"step": "deploy 5 replicas", "seconds": round(time.monotonic() - t0, 1)}]
    assert len(c.live()) == 5

    db_host = Path(c.shared_dir()) / "runs.db"
    sidefx.create(str(db_host))
    os.chmod(db_host, 0o666)  # the jobs run as the image's user
    tag = secrets.token_hex(3)

    def spec_for(i: int):
        jid = f"sw{tag}-{i}"
        return build_spec("call", job_id=jid, target="harness.sidefx:record",
                          args=["/shared/runs.db", jid, JOB_SECONDS]), jid

    (ROOT / "test-artifacts").mkdir(exist_ok=True)
    (ROOT / "test-artifacts" / "swarm-history.jsonl").unlink(missing_ok=True)  # the recorder appends
    rec = HistoryRecorder(ROOT / "test-artifacts" / "swarm-history.jsonl")
    stop = threading.Event()
    acked = threading.Event()
    out: dict = {}

    def progress(n_acked: int, _done: int) -> None:
        if n_acked >= 30:
            acked.set()

    def work() -> None:
        try:
            out["timing"] = run_workload(c.client_urls(), c.token, rec, jobs=100_000, rate=RATE, spec_for=spec_for,
                                         stop_submitting=stop, on_progress=progress, drain_timeout=60, clients=2,
                                         timeout=15)
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        assert acked.wait(60), f"no 30 acknowledgements in 60 s: {out}"

        def step(name: str, action) -> None:
            start = time.time()
            secs = action()
            steps.append({"step": name, "seconds": round(secs, 1), "from": start, "to": time.time()})
            print(f"swarm test: {name}: {secs:.1f} s, {len(rec.ops)} ops so far", flush=True)

        step("scale 5 -> 7 (two join)", lambda: c.scale(7))
        step("scale 7 -> 4 (three leave)", lambda: c.scale(4))
        step("rolling update --force of all 4", c.rolling_update)

        def kill_one() -> float:
            t = time.monotonic()
            victim = c.live()[0]
            old = victim.task
            c.kill(victim)
            # Swarm starts a new task in the slot (on the slot's volume), which comes back into the ring
            wait_for(lambda: c.refresh() and victim.task != old and victim.state == "running", 120,
                     f"a new task in slot {victim.slot}")
            c.wait_tasks(4, 180)
            return time.monotonic() - t
        step("SIGKILL one task's container", kill_one)
        time.sleep(2)  # a few more submissions into the settled grid
    finally:
        stop.set()
        th.join(150)
    assert not th.is_alive() and "error" not in out, out.get("error")

    verdict = check(rec.ops)
    runs = sidefx.runs(str(db_host))
    acked_ids = set(verdict.acknowledged)
    never_ran = [j for j in acked_ids if j not in runs]
    reruns = {j: at[1:] for j, at in runs.items() if len(at) > 1}
    ends = [s["from"] for s in steps[2:]] + [float("inf")]
    for s, end in zip(steps[1:], ends):  # a re-run belongs to the step during which (or after which) it started
        mine = sorted(t - s["from"] for at in reruns.values() for t in at if s["from"] <= t < end)
        s["reruns"] = len(mine)
        if mine:  # when they started, seconds into the step
            s["reruns_started"] = f"{mine[0]:.1f}-{mine[-1]:.1f} s"
    timing = out["timing"]
    report = {"verdict": summary_line(verdict), "acknowledged": verdict.acknowledged_count,
              "unknown_submits": timing["unknown"], "final_reads": timing["final_reads"],
              "runs": sum(len(v) for v in runs.values()), "reruns": sum(len(v) for v in reruns.values()),
              "steps": [{k: v for k, v in s.items() if k not in ("from", "to")} for s in steps],
              "total_seconds": round(time.monotonic() - t0, 1)}
    (ROOT / "test-artifacts" / "swarm-steps.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))

    assert verdict.valid, verdict.to_dict(limit=20)
    assert verdict.lost_count == 0 and verdict.duplicated_count == 0
    assert verdict.acknowledged_count >= 100, report
    assert not never_ran, f"acknowledged jobs the side-effect file never saw run: {never_ran[:10]}"
    assert out["timing"]["wrong_count"] == 0, out["timing"]["wrong"]
