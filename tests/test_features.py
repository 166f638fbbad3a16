"""What users expect (issue 6), end to end against a live 3-node grid: metrics, job controls,
the joblib backend and GridExecutor's concurrent.futures contract."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.local import LocalCluster
from jobgrid.client import Client
from jobgrid.errors import JobgridError
from jobgrid.examples import add, fail, sleep, square
from jobgrid.executor import GridExecutor

from conftest import by_value, wait_for

by_value(__name__)


def flaky(counter: str, fail_times: int) -> int:
    """Fail the first `fail_times` runs (counted in a file), then return the run number."""
    p = Path(counter)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    if n <= fail_times:
        raise KeyError(f"run {n} fails")
    return n


def stamp(path: str, value: str) -> str:
    with open(path, "a") as f:
        f.write(value + "\n")
    return value



@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("features"), runners=2, exit_with_parent=True)
    try:
        c.up(3)
        yield c
    finally:
        c.stop()


@pytest.fixture
def client(grid):
    with Client([n.url for n in grid.nodes], timeout=30) as c:
        yield c


def metrics(grid) -> dict[str, float]:
    """Sum of every sample over the live nodes, by sample name."""
    out: dict[str, float] = {}
    for n in grid.live():
        with urllib.request.urlopen(n.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


# ---- metrics -------------------------------------------------------------------------------------

def test_metrics_count_submissions_runs_results_and_retries(grid, client, tmp_path):
    before = metrics(grid)
    futs = [client.submit(add, i, 1) for i in range(6)]
    bad = client.submit_job(fail, ("metric boom",), max_retries=1)
    assert [f.result(60) for f in futs] == [i + 1 for i in range(6)]
    with pytest.raises(ValueError):
        bad.result(60)

    def moved():
        m = metrics(grid)
        d = {k: m.get(k, 0) - before.get(k, 0) for k in m}
        ok = (d.get("jobgrid_jobs_submitted_total", 0) >= 7 and d.get("jobgrid_jobs_succeeded_total", 0) >= 6
              and d.get("jobgrid_jobs_failed_total", 0) >= 1 and d.get("jobgrid_jobs_retried_total", 0) >= 1
              and d.get("jobgrid_jobs_started_total", 0) >= 8 and d.get("jobgrid_job_run_seconds_count", 0) >= 8)
        return (m, d) if ok else None

    m, d = wait_for(moved, 20, "counters to move")
    assert m["jobgrid_ring_size"] == 9  # three nodes, each sees three servers
    assert m["jobgrid_heartbeat_rtt_seconds_count"] > 0
    assert "jobgrid_active_queue" in m and "jobgrid_backup_queue" in m
    assert "jobgrid_jobs_stolen_total" in m and "jobgrid_jobs_promoted_total" in m
    assert "jobgrid_duplicate_results_dropped_total" in m


# ---- retries, timeouts ---------------------------------------------------------------------------

def test_retries_back_off_and_keep_the_attempt_count(client, tmp_path):
    counter = str(tmp_path / "runs")
    t0 = time.time()
    fut = client.submit_job(flaky, (counter, 2), max_retries=3, retry_on=[KeyError])
    assert fut.result(60) == 3
    res = client.wait_result(fut.job_id, 10)
    assert res.attempts == 3
    # backoff 0.1 s then 0.2 s, with jitter x0.5-1.5: at least 0.15 s between first and last run
    assert res.started_at - t0 >= 0.15


def test_retry_on_filters_exception_types(client, tmp_path):
    counter = str(tmp_path / "runs")
    fut = client.submit_job(flaky, (counter, 5), max_retries=3, retry_on=["ValueError"])
    with pytest.raises(KeyError):
        fut.result(60)
    assert Path(counter).read_text() == "1"


def test_per_job_timeout_kills_the_job(client):
    t0 = time.monotonic()
    fut = client.submit_job(sleep, (60, "late"), timeout=1.0)
    with pytest.raises(Exception) as e:
        fut.result(30)
    assert time.monotonic() - t0 < 20
    assert "timeout" in str(e.value).lower()
    assert client.wait_result(fut.job_id, 5).error_type == "JobTimeout"


# ---- cancellation --------------------------------------------------------------------------------

def test_cancel_a_queued_job_from_the_cli(grid, client):
    fut = client.submit_job(add, (1, 2), delay=60)
    node = grid.nodes[2]  # not necessarily the owner: the node forwards to it
    cmd = [sys.executable, "-m", "jobgrid.cli", "cancel", fut.job_id, "--address", node.url]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "cancelled" in p.stdout
    res = client.wait_result(fut.job_id, 10)
    assert res.state == "cancelled" and res.error == "cancelled before it ran"


def test_cancel_a_running_job_kills_its_worker(grid, client):
    fut = client.submit_job(sleep, (120, "never"))

    def running():
        for n, st in grid.states().items():
            for r in st["runners"]:
                if r["job_id"] == fut.job_id:
                    return n, r["pid"]
        return None

    name, pid = wait_for(running, 30, "the job to start")
    assert fut.cancel() is True
    assert fut.cancelled()
    # the runner hears of it at its next lease renewal and kills the job's worker process
    wait_for(lambda: running() is None, 20, "the worker to stop running the job")
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or
             "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), 20, "the worker process to die")
    res = client.wait_result(fut.job_id, 10)
    assert res.state == "cancelled" and res.error == "cancelled while running"


# ---- ordering: priority, delay, dependencies ----------------------------------------------------------

def test_priority_higher_first(cluster_factory, tmp_path):
    c = cluster_factory(runners=1)
    (n1,) = c.up(1)
    log = str(tmp_path / "order")
    with Client(n1.url) as cl:
        blocker = cl.submit(sleep, 1.5)
        wait_for(lambda: any(r["job_id"] == blocker.job_id for r in c.get(n1, "/state")["runners"]), 20,
                 "the blocker to run")
        low = [cl.submit_job(stamp, (log, f"low{i}"), priority=-1) for i in range(3)]
        high = [cl.submit_job(stamp, (log, f"high{i}"), priority=10) for i in range(3)]
        for f in low + high:
            f.result(60)
    order = Path(log).read_text().split()
    assert order[:3] == ["high0", "high1", "high2"], order
    assert sorted(order[3:]) == ["low0", "low1", "low2"]


def test_delayed_job_waits(client):
    t0 = time.time()
    fut = client.submit_job(add, (2, 3), delay=2.0)
    assert fut.result(30) == 5
    assert client.wait_result(fut.job_id, 5).started_at >= t0 + 2.0


def test_dependencies_run_after_success_and_fail_fast(client):
    first = client.submit(sleep, 1.0, "first")
    then = client.submit_job(add, (1, 1), after=[first.job_id])
    assert then.result(60) == 2
    a, b = client.wait_result(first.job_id, 5), client.wait_result(then.job_id, 5)
    assert b.started_at >= a.finished_at

    broken = client.submit(fail, "upstream")
    child = client.submit_job(add, (1, 1), after=[broken.job_id, first.job_id])
    with pytest.raises(Exception) as e:
        child.result(60)
    res = client.wait_result(child.job_id, 5)
    assert res.error_type == "DependencyFailed" and broken.job_id in res.error
    assert res.started_at == 0.0, "a job whose dependency failed never runs"


def test_result_expires_after_its_ttl(grid, client):
    fut = client.submit_job(add, (4, 4), result_ttl=1.0)
    assert fut.result(30) == 8

    def gone_everywhere():
        for n in grid.live():
            try:
                urllib.request.urlopen(f"{n.url}/jobs/{fut.job_id}/result", timeout=5)
                return False
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    return False
        return True

    wait_for(gone_everywhere, 20, "the result to expire on every node")


def test_attempts_survive_promotion(cluster_factory, tmp_path):
    c = cluster_factory(runners=1)
    nodes = c.up(3)
    counter = str(tmp_path / "runs")
    with Client([n.url for n in nodes]) as cl:
        fut = cl.submit_job(flaky, (counter, 1), max_retries=3, retry_on=["KeyError"], delay=2.0)
        owner = cl.status(fut.job_id)["owner"]
        victim = next(n for n in nodes if n.node_id == owner)
        c.kill(victim)
        assert fut.result(90) == 2
        res = cl.wait_result(fut.job_id, 10)
    assert res.attempts == 2
    promos = [p for st in c.states().values() for p in st["promotions"] if p["dead"] == owner]
    assert promos and sum(p["jobs"] for p in promos) >= 1


# ---- joblib --------------------------------------------------------------------------------------

def test_joblib_backend_runs_a_real_workload(grid):
    import joblib

    import jobgrid.joblib  # noqa: F401 - registers the backend

    with joblib.parallel_config(backend="jobgrid", address=[n.url for n in grid.nodes], n_jobs=4):
        out = joblib.Parallel()(joblib.delayed(square)(i) for i in range(60))
    assert out == [i * i for i in range(60)]
    with joblib.parallel_config(backend="jobgrid", address=grid.nodes[0].url, n_jobs=2):
        with pytest.raises(ValueError, match="joblib boom"):
            joblib.Parallel()(joblib.delayed(fail)("joblib boom") for _ in range(2))


# ---- GridExecutor ----------------------------------------------------------------------------------

def test_executor_as_completed_wait_and_exceptions(grid):
    with GridExecutor([n.url for n in grid.nodes]) as ex:
        futs = [ex.submit(sleep, 0.2 * (3 - i), i) for i in range(3)]
        assert sorted(f.result() for f in cf.as_completed(futs, timeout=60)) == [0, 1, 2]
        bad = ex.submit(fail, "executor boom")
        done, not_done = cf.wait([bad, *futs], timeout=60, return_when=cf.ALL_COMPLETED)
        assert not not_done
        assert isinstance(bad.exception(), ValueError) and "executor boom" in str(bad.exception())
        first = ex.submit(sleep, 30)
        fast = ex.submit(add, 1, 1)
        done, not_done = cf.wait([first, fast], timeout=60, return_when=cf.FIRST_COMPLETED)
        assert fast in done and first in not_done
        assert first.cancel()


def test_executor_map_timeout_cancel_and_shutdown(grid):
    ex = GridExecutor([n.url for n in grid.nodes])
    assert list(ex.map(add, range(5), range(5), timeout=60)) == [0, 2, 4, 6, 8]
    it = ex.map(sleep, [30, 30])
    with pytest.raises(cf.TimeoutError):
        list(ex.map(sleep, [30], timeout=1.0))
    queued = ex.submit(add, 1, 2)
    with pytest.raises(JobgridError):  # the job runs on the grid; cancelling a finished one is refused
        queued.result(60)
        if not queued.cancel():
            raise JobgridError("refused")
    pending = [ex.submit(sleep, 30) for _ in range(2)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    with pytest.raises(RuntimeError):
        ex.submit(add, 1, 1)
    del it


# ---- configuration ---------------------------------------------------------------------------------

def test_config_file_env_and_flags_precedence(tmp_path):
    from harness.local import free_port
    port = free_port()
    (tmp_path / "jobgrid.toml").write_text(
        f'[server]\nport = {port}\nrunners = 1\nreplicas = 1\nlog_level = "warning"\n'
        f'data_dir = "{tmp_path / "data"}"\n')
    env = {**__import__("os").environ, "JOBGRID_RUNNERS": "2"}  # env beats the file
    env.pop("JOBGRID_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "jobgrid.cli", "server", "--replicas", "1"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def state():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=2) as r:
                    return json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                return None
        st = wait_for(state, 30, "the node configured from jobgrid.toml")
        assert len(st["runners"]) == 2
        assert (tmp_path / "data").is_dir()
    finally:
        proc.terminate()
        proc.wait(15)
    bad = subprocess.run([sys.executable, "-m", "jobgrid.cli", "server", "--config", str(tmp_path / "nope.toml")],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "no such file" in " ".join(bad.stderr.split())
