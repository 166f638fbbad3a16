"""The harness scenarios on the local backend (processes on 127.0.0.x), and `harness run` end to end.

Each scenario runs a real 5-node grid (R=3), a workload of sleep jobs recorded as a history, one fault
while the queues are full, then heals and drains. It asserts the checker's verdict and that backup
replicas were promoted, as the nodes themselves report in GET /state "promotions".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


from harness import scenarios

from conftest import needs_root, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _up(cluster_factory, links="direct"):
    # a 127.0.x.0/24 block of our own: iptables rules match addresses, so no other test's partition touches us
    c = cluster_factory(replicas=3, runners=1, token="t" * 24, first_octet=256 * (40 + os.getpid() % 200) + 10,
                        links=links)
    c.up(5, timeout=90)
    return c


def _assert_valid(out: scenarios.Outcome, acknowledged: int = 150) -> None:
    assert out.verdict.valid, out.verdict.to_dict(limit=20)
    assert out.verdict.acknowledged_count == acknowledged, out.verdict.to_dict(limit=5)
    assert out.verdict.lost_count == 0 and out.verdict.duplicated_count == 0


def _assert_outcome(out: scenarios.Outcome, acknowledged: int = 150) -> None:
    _assert_valid(out, acknowledged)
    assert out.victims, out.fault
    for vid in out.victims:
        assert out.promoted_for(vid), f"no promotion of {vid}'s backups in {out.promotions}"
    assert sum(p.get("jobs", 0) for v in out.victims for p in out.promoted_for(v)) > 0, out.promotions


def test_kill_two_of_five(cluster_factory):
    _assert_outcome(scenarios.kill_two(_up(cluster_factory)))


@needs_root
def test_partition_halves_then_heal(cluster_factory):
    c = _up(cluster_factory)
    _assert_outcome(scenarios.partition_halves(c))
    c.wait_converged(60)  # after heal the five agree again


def test_pause_longer_than_failure_timeout(cluster_factory):
    _assert_outcome(scenarios.pause_one(_up(cluster_factory)))


def test_kill_then_restart(cluster_factory):
    c = _up(cluster_factory)
    out = scenarios.kill_restart(c)
    _assert_outcome(out)
    assert len(c.live()) == 5


# ---- through Toxiproxy: every link (clients' too) passes its own proxy of a real toxiproxy-server ----
# Scenarios that leave the grid healed and converged share one cluster (a 5-node start costs more than most).
def test_blackhole_then_partitions_via_toxiproxy_and_iptables(cluster_factory):
    """2. a blackholed node is promoted like a killed one and rejoins; 4. halves via Toxiproxy with clients on
    both sides; and iptables still cuts links that pass Toxiproxy (rules on the proxies' ports, root only)."""
    c = _up(cluster_factory, "toxiproxy")
    _assert_outcome(scenarios.blackholed_node(c))
    assert len(c.live()) == 5
    _assert_outcome(scenarios.partition_halves(c, via="toxiproxy"))
    c.wait_converged(60)
    assert c.proxies.active() == []  # heal enabled every proxy again
    if os.geteuid() == 0:
        _assert_outcome(scenarios.partition_halves(c, via="iptables"))
        c.wait_converged(60)


def test_slow_successor_big_jobs_on_a_slow_owner_and_a_client_reset(cluster_factory):
    """1. 200 ms on every link of one replica; 5. 50 KB/s on the owner's links with 256 KB jobs; 6. a client's
    link reset mid-submit."""
    c = _up(cluster_factory, "toxiproxy")
    out = scenarios.slow_successor(c, ms=200)
    _assert_valid(out)
    # acks that needed the slow replica's copy waited for it: 200 ms each way on its links
    assert out.submit_latency(0.99) >= 0.2, out.timing["latencies"][-20:]
    assert c.proxies.active() == []

    out = scenarios.slow_owner_big_jobs(c, rate_kb=50, jobs=12)
    _assert_valid(out, acknowledged=12)
    assert not any("500" in e for e in out.submit_errors()), out.submit_errors()
    # a job through n1's client link carries 256 KB at 50 KB/s: its ack took seconds
    assert out.submit_latency(0.99) >= 256 / 50 * 0.8, out.timing["latencies"]

    c.wait_converged(60)
    _assert_valid(scenarios.client_link_reset(c, seconds=2.0), acknowledged=300)


def test_flapping_link_loses_nothing(cluster_factory):
    """3. n1 <-> n2 down and up every 1-2 s for 30 s."""
    c = _up(cluster_factory, "toxiproxy")
    out = scenarios.flapping_link(c, seconds=30.0)
    _assert_valid(out, acknowledged=300)
    assert out.fault["flips"] >= 15, out.fault  # down/up every 1-2 s for 30 s
    print(f"flapping link: {out.fault['flips']} flips, {out.ring_changes} ring changes")


def test_harness_run_cli_writes_run_folder(tmp_path):
    runs = tmp_path / "runs"
    cmd = [str(ROOT / ".venv" / "bin" / "harness"), "run", "--backend", "local", "--nodes", "5", "--jobs", "150",
           "--kill", "1", "--partition", "one", "--duration", "10", "--drain", "60", "--runs-dir", str(runs)]
    if not Path(cmd[0]).exists():
        cmd[0:1] = [sys.executable, "-m", "harness.cli"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                       env={**os.environ, "COLUMNS": "120"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "VALID" in r.stdout
    (run,) = list(runs.iterdir())
    res = json.loads((run / "results.json").read_text())
    assert res["valid?"] is True and res["lost-count"] == 0 and res["acknowledged-count"] == 150
    assert isinstance(res["promotions"], list) and res["promotions"], res
    for png in ("throughput.png", "latency.png"):
        data = (run / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert (run / "history.jsonl").stat().st_size > 0
    assert (run / "n1.log").exists()


def test_harness_domain_error_is_one_red_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "harness.cli", "status"], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "HARNESS_STATE_DIR": str(tmp_path / ".h")}, timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "harness up" in r.stderr


def test_nodes_of_a_test_cluster_stop_when_the_process_that_started_them_is_killed(tmp_path):
    """A test or benchmark run killed outright (SIGKILL) leaves no grid behind (exit_with_parent)."""
    script = f"""
import sys, time
sys.path[:0] = {[str(ROOT), str(ROOT / 'services')]!r}
from pathlib import Path
from harness.local import LocalCluster
c = LocalCluster(Path({str(tmp_path)!r}), replicas=1, runners=1, exit_with_parent=True)
c.up(2, timeout=60)
print(" ".join(str(n.pid) for n in c.nodes), flush=True)
time.sleep(600)
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        assert all(_alive(p) for p in pids)
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait(10)
        wait_for(lambda: not any(_alive(p) for p in pids), 20, "the nodes to stop after their parent died")
    finally:
        parent.kill()
        parent.wait(10)
        for p in pids if "pids" in locals() else []:
            if _alive(p):
                os.killpg(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, or a process gone or re-used by another program, is not ours)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return state != "Z" and b"jobgrid.cli" in cmd
