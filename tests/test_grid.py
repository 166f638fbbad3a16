"""The grid core end to end: real node processes on loopback, real HTTP, real SQLite."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.local import LocalCluster, NodeHandle, free_port
from jobgrid import Client, GridExecutor, examples
from jobgrid.client import ScriptOutput, build_spec, pickle_spec, script_spec
from jobgrid.ring import largest_gap_midpoint

from conftest import by_value, wait_for

by_value(__name__)

JOBGRID = str(Path(sys.executable).parent / "jobgrid")
SCRIPT = "import sys\nprint(int(sys.argv[1]) * 2)\n"



def counts(cluster: LocalCluster) -> dict[str, dict]:
    return {name: st["counts"] for name, st in cluster.states().items()}


def ids_by_name(cluster: LocalCluster) -> dict[str, str]:
    return {n.name: n.node_id for n in cluster.nodes}


def successors_of(state: dict, owner: str, k: int) -> list[str]:
    ms = sorted(state["ring"]["members"], key=lambda m: m["location"])
    i = next(j for j, m in enumerate(ms) if m["id"] == owner)
    return [ms[(i + d) % len(ms)]["id"] for d in range(1, k + 1)]


# ---- ring formation -------------------------------------------------------------------------------

def test_four_simultaneous_joins_form_one_ring_with_distinct_positions(cluster_factory):
    c = cluster_factory(runners=0)
    c.up(5, together=True, timeout=90)
    lists = c.server_lists()
    assert len(lists) == 5
    views = {(sl["epoch"], tuple(sorted((s["id"], s["location"], s["ip"], s["port"]) for s in sl["servers"])))
             for sl in lists.values()}
    assert len(views) == 1, views
    [(_, servers)] = views
    locations = [s[1] for s in servers]
    assert len(set(locations)) == 5
    expected: list[int] = []
    for _ in range(5):
        expected.append(largest_gap_midpoint(expected))
    assert sorted(locations) == sorted(expected)  # joins were serialised by the add_locks
    assert {s[0] for s in servers} == set(ids_by_name(c).values())


# ---- throughput and correctness -------------------------------------------------------------------

def test_five_nodes_run_1000_mixed_jobs_correctly_and_drop_replicas_after(cluster_factory):
    c = cluster_factory(runners=2)
    nodes = c.up(5, timeout=90)
    clients = [Client(nodes[i].url, timeout=60) for i in (0, 2, 4)]
    try:
        expected: dict[str, object] = {}
        futures: list[concurrent.futures.Future] = []
        for ci, client in enumerate(clients):
            specs = []
            for i in range(ci, 1000, 3):
                if i % 3 == 0:
                    s = pickle_spec(examples.square, (i,), {})
                    expected[s.id] = i * i
                elif i % 3 == 1:
                    s = build_spec("call", target="jobgrid.examples:add", args=[i, 1000])
                    expected[s.id] = i + 1000
                else:
                    s = script_spec(SCRIPT, [str(i)], name="double.py")
                    expected[s.id] = ScriptOutput(0, f"{i * 2}\n", "")
                specs.append(s)
            futures += client.submit_many(specs)
        assert len(futures) == 1000
        done, not_done = concurrent.futures.wait(futures, timeout=240)
        assert not not_done, f"{len(not_done)} jobs unfinished"
        got = {f.job_id: f.result() for f in futures}
        wrong = {k: (got[k], v) for k, v in expected.items() if got[k] != v}
        assert not wrong, list(wrong.items())[:5]
        # finished jobs leave every queue: owners' active and the successors' backups go back to 0
        wait_for(lambda: all(v["active"] == 0 and v["backup"] == 0 for v in counts(c).values()), 30,
                 "queues and replicas to empty")
        assert all(st["duplicates_dropped"] >= 0 for st in c.states().values())
        assert all(c.healthy(n) for n in nodes)
    finally:
        for client in clients:
            client.close()


def test_jobs_submitted_to_one_node_are_run_by_runners_of_every_node(cluster_factory):
    c = cluster_factory(runners=2)
    nodes = c.up(3, timeout=60)
    with Client(nodes[0].url, timeout=60) as client:
        futs = client.submit_many([pickle_spec(examples.sleep, (0.25, i), {}) for i in range(60)])
        assert [f.result(timeout=120) for f in futs] == list(range(60))
        ran_on = {client.wait_result(f.job_id, timeout=10).node for f in futs}
    assert ran_on == set(ids_by_name(c).values()), ran_on


# ---- durability ---------------------------------------------------------------------------------------

def _stop(node: NodeHandle) -> None:
    assert node.proc is not None
    node.proc.terminate()
    node.proc.wait(30)
    node.state = "stopped"


def test_queued_jobs_survive_a_restart_on_the_same_data_dir(cluster_factory):
    c = cluster_factory(runners=0)
    [n1] = c.up(1)
    with Client(n1.url, timeout=30) as client:
        futs = client.submit_many([build_spec("call", target="jobgrid.examples:add", args=[i, 1]) for i in range(25)])
        ids = [f.job_id for f in futs]
    before = c.get(n1, "/state")
    assert before["counts"]["queued"] == 25

    _stop(n1)  # SIGTERM: a clean shutdown
    c.start(n1)
    c.wait_healthy(n1, 60)
    after = c.get(n1, "/state")
    assert after["id"] == before["id"]
    assert after["counts"]["queued"] == 25
    assert after["epoch"] > before["epoch"]
    assert all(c.get(n1, f"/jobs/{i}")["state"] == "queued" for i in ids)

    c.kill(n1)  # SIGKILL: no chance to clean up
    c.runners = 1  # come back with a runner, so the jobs run from the restored queue
    c.start(n1)
    c.wait_healthy(n1, 60)
    with Client(n1.url, timeout=30) as client:
        assert [client.result(i, timeout=60) for i in ids] == [i + 1 for i in range(25)]
    assert c.get(n1, "/state")["counts"]["active"] == 0


def test_each_job_is_copied_to_exactly_the_owners_two_successors(cluster_factory):
    c = cluster_factory(runners=0, replicas=3)
    nodes = c.up(4, timeout=60)
    owner = nodes[1]
    with Client(owner.url, timeout=30) as client:
        client.submit_many([pickle_spec(examples.noop, (i,), {}) for i in range(40)])
    state = c.get(owner, "/state")
    succ = set(successors_of(state, owner.node_id, 2))
    name_of = {v: k for k, v in ids_by_name(c).items()}

    def layout() -> dict[str, tuple[int, int]] | None:
        got = {name_of[st["id"]]: (st["counts"]["active"], st["counts"]["backup"]) for st in c.states().values()}
        want = {name_of[st["id"]]: (40 if st["id"] == owner.node_id else 0, 40 if st["id"] in succ else 0)
                for st in c.states().values()}
        return got if got == want and len(got) == 4 else None

    wait_for(layout, 20, "replicas on exactly the owner's two successors")


# ---- failing jobs -------------------------------------------------------------------------------------

def test_crashing_job_fails_after_its_crash_limit_and_the_node_stays_healthy(cluster_factory):
    c = cluster_factory(runners=1)
    [n1] = c.up(1)
    with Client(n1.url, timeout=30) as client:
        fut = client.submit(examples.crash)
        res = client.wait_result(fut.job_id, timeout=60)
        assert res.state == "failed"
        assert res.error_type == "WorkerCrashed"
        assert "3 times" in (res.error or ""), res.error
        with pytest.raises(Exception):
            fut.result(timeout=10)
        assert c.healthy(n1)
        assert client.submit(examples.square, 7).result(timeout=60) == 49


def test_hanging_job_is_killed_at_its_timeout_and_the_next_job_runs(cluster_factory):
    c = cluster_factory(runners=1)
    [n1] = c.up(1)
    with Client(n1.url, timeout=30) as client:
        t0 = time.monotonic()
        fut = client.submit_job(examples.hang, timeout=1)
        res = client.wait_result(fut.job_id, timeout=60)
        assert res.state == "failed" and res.error_type == "JobTimeout", res
        assert time.monotonic() - t0 < 30
        assert client.submit(examples.add, 2, 3).result(timeout=60) == 5
        assert c.healthy(n1)


# ---- GridExecutor ---------------------------------------------------------------------------------------

def test_grid_executor_is_a_drop_in_executor(cluster_factory):
    c = cluster_factory(runners=2)
    nodes = c.up(2, timeout=60)
    ex = GridExecutor([n.url for n in nodes])
    assert list(ex.map(examples.square, range(30))) == [i * i for i in range(30)]
    assert ex.submit(examples.add, 40, 2).result(timeout=60) == 42
    with pytest.raises(ValueError, match="bad input"):
        ex.submit(examples.fail, "bad input").result(timeout=60)
    slow = [ex.submit(examples.sleep, 0.3, i) for i in range(6)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in slow)
    assert [f.result() for f in slow] == list(range(6))
    with pytest.raises(RuntimeError):
        ex.submit(examples.noop, 1)


# ---- command line -------------------------------------------------------------------------------------

def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGRID_")}
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return subprocess.run([JOBGRID, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_cli_submit_result_and_servers(cluster_factory, tmp_path):
    c = cluster_factory(runners=1)
    [n1] = c.up(1)
    script = tmp_path / "greet.py"
    script.write_text("import sys\nprint('args:', ' '.join(sys.argv[1:]))\n")
    where = ["--port", str(n1.port), "--host", n1.host]
    r = run_cli("submit", str(script), "a", "b", "--wait", *where)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "args: a b" in r.stdout
    job_id = r.stdout.split()[0]

    r = run_cli("result", job_id, *where)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "succeeded" in r.stdout and "args: a b" in r.stdout

    r = run_cli("servers", *where)
    assert r.returncode == 0, r.stdout + r.stderr
    assert n1.node_id in r.stdout and f"{n1.host}:{n1.port}" in r.stdout


def test_cli_submit_to_a_dead_port_prints_one_clear_line(tmp_path):
    script = tmp_path / "x.py"
    script.write_text("print(1)\n")
    port = free_port()
    t0 = time.monotonic()
    r = run_cli("submit", str(script), "--port", str(port))  # the default 30 s timeout: must fail fast anyway
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert str(port) in lines[0] and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 10
