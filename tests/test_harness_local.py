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
from harness_checks import assert_outcome, blackhole_then_partitions, flapping, slow_links_and_client_reset

ROOT = Path(__file__).resolve().parent.parent


def _up(cluster_factory, links="direct"):
    # a 127.0.x.0/24 block of our own: iptables rules match addresses, so no other test's partition touches us
    c = cluster_factory(replicas=3, runners=1, token="t" * 24, first_octet=256 * (40 + os.getpid() % 200) + 10,
                        links=links)
    c.up(5, timeout=90)
    return c


def test_kill_two_of_five(cluster_factory):
    assert_outcome(scenarios.kill_two(_up(cluster_factory)))


@needs_root
def test_partition_halves_then_heal(cluster_factory):
    c = _up(cluster_factory)
    assert_outcome(scenarios.partition_halves(c))
    c.wait_converged(60)  # after heal the five agree again


def test_pause_longer_than_failure_timeout(cluster_factory):
    assert_outcome(scenarios.pause_one(_up(cluster_factory)))


def test_kill_then_restart(cluster_factory):
    c = _up(cluster_factory)
    out = scenarios.kill_restart(c)
    assert_outcome(out)
    assert len(c.live()) == 5


# ---- through Toxiproxy: every link (clients' too) passes its own proxy of a real toxiproxy-server ----
# Scenarios that leave the grid healed and converged share one cluster (a 5-node start costs more than most).
def test_blackhole_then_partitions_via_toxiproxy_and_iptables(cluster_factory):
    blackhole_then_partitions(_up(cluster_factory, "toxiproxy"), iptables=os.geteuid() == 0)


def test_slow_successor_big_jobs_on_a_slow_owner_and_a_client_reset(cluster_factory):
    slow_links_and_client_reset(_up(cluster_factory, "toxiproxy"))


def test_flapping_link_loses_nothing(cluster_factory):
    out = flapping(_up(cluster_factory, "toxiproxy"))
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
    # both planned faults happened and are in the results; a promotion is recorded only when the node taken
    # away held unfinished jobs (no-op jobs may all be done by then), so promotions may be an empty list
    assert {f["kind"] for f in res["faults"]} >= {"kill", "partition"}, res["faults"]
    assert isinstance(res["promotions"], list)
    assert all(p["jobs"] > 0 and p["dead_name"] for p in res["promotions"]), res["promotions"]
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
