"""The membership simulation: a small grid through every scenario, its checks able to fail, determinism."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.sim import scenarios
from harness.sim.alltoall import steady as alltoall_steady
from harness.sim.scenarios import CheckFailed, run_all
from harness.sim.world import World
from jobgrid.swim import SwimMembership
from jobgrid.swim.rounds import Round


def test_a_200_node_grid_forms_holds_loses_members_grows_splits_and_heals():
    rep = run_all(200, seed=3, cut_periods=40)
    s = rep.steps
    assert s["form"]["joiners"] == 199 and s["form"]["ring_changes"] <= 8  # batched, not one change per joiner
    assert 1.9 <= s["steady"]["messages_per_node_per_period"] <= 2.1
    assert s["steady"]["suspicions"] == 0 and s["steady"]["removals"] == 0 and s["steady"]["fenced_nodes"] == 0
    c = s["crash"]
    assert c["crashed"] == 2 and c["first_suspected"] <= c["first_declared_dead"] <= c["removal_committed"]
    assert s["storm"]["joiners"] == 20
    p = s["partition"]
    assert p["minority"] == 87 and p["majority"] == 131
    assert p["minority_rings_committed"] == 0 and p["minority_removals"] == 0
    assert p["minority_fenced_for_good_last"] < p["majority_removed_minority"]
    assert p["members_after"] == 218 and p["rejoined"] == 87
    assert s["steady_after"]["removals"] == 0


def test_the_same_seed_gives_the_same_run_and_another_seed_another():
    one, two, other = run_all(40, seed=5, cut_periods=30), run_all(40, seed=5, cut_periods=30), \
        run_all(40, seed=6, cut_periods=30)
    assert one.steps == two.steps
    assert one.steps != other.steps


def test_the_partition_check_catches_a_minority_that_keeps_quorum(monkeypatch):
    w = World(seed=2)
    scenarios.form(w, 40)
    monkeypatch.setattr(SwimMembership, "has_quorum", lambda self, now: self.is_member)
    with pytest.raises(CheckFailed, match="minority"):
        scenarios.partition(w, 0.4, 30)


def test_the_partition_check_catches_a_minority_that_commits_a_ring(monkeypatch):
    w = World(seed=2)
    scenarios.form(w, 40)
    monkeypatch.setattr(Round, "majority", lambda self: 1)  # votes no longer need a majority
    monkeypatch.setattr(SwimMembership, "has_quorum", lambda self, now: self.is_member)
    with pytest.raises(CheckFailed, match="minority side committed"):
        scenarios.partition(w, 0.4, 30)


def test_all_to_all_sends_two_messages_per_peer_per_period_and_removes_no_one():
    r = alltoall_steady(30, seed=1)
    assert r["messages_per_node_per_period"] == 2 * 29
    assert r["removals_proposed"] == 0 and r["nodes_with_quorum"] == 30


def test_the_command_line_runs_a_seeded_simulation(tmp_path):
    out = tmp_path / "sim.json"
    p = subprocess.run([sys.executable, "-m", "harness.sim", "--nodes", "30", "--seed", "4", "--cut-periods", "30",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rep = json.loads(out.read_text())
    assert rep["seed"] == 4 and set(rep["swim"]["30"]) >= {"form", "steady", "crash", "storm", "partition"}
    bad = subprocess.run([sys.executable, "-m", "harness.sim", "--minority", "0.6"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--minority must be above 0 and below 0.5" in bad.stderr


def test_the_node_never_imports_the_simulation():
    code = ("import sys, jobgrid.node.app, jobgrid.node.grid; "
            "sys.exit(1 if any(m == 'harness' or m.startswith('harness.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
