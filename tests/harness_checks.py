"""What the harness scenario tests assert, shared by the local (tests/test_harness_local.py) and Docker
(tests/docker/test_harness_docker.py) backends, so both check the same things."""

from __future__ import annotations

from typing import Any

from harness import scenarios


def assert_valid(out: scenarios.Outcome, acknowledged: int = 150) -> None:
    assert out.verdict.valid, (out.verdict.to_dict(limit=20), out.timing.get("no_result"), out.fault)
    assert out.verdict.acknowledged_count == acknowledged, (out.verdict.to_dict(limit=5), out.submit_errors()[:5])
    assert out.verdict.lost_count == 0 and out.verdict.duplicated_count == 0


def assert_outcome(out: scenarios.Outcome, acknowledged: int = 150) -> None:
    """Valid, and every node the fault took away had its backup replicas promoted (some jobs among them)."""
    assert_valid(out, acknowledged)
    assert out.victims, out.fault
    for vid in out.victims:
        assert out.promoted_for(vid), f"no promotion of {vid}'s backups in {out.promotions}"
    assert sum(p.get("jobs", 0) for v in out.victims for p in out.promoted_for(v)) > 0, out.promotions


def blackhole_then_partitions(c: Any, *, iptables: bool) -> None:
    """2. a blackholed node is promoted like a killed one and rejoins; 4. halves via Toxiproxy with clients on
    both sides; then (root) iptables still cuts links that pass Toxiproxy (rules on the proxies' ports)."""
    assert_outcome(scenarios.blackholed_node(c))
    assert len(c.live()) == 5
    assert_outcome(scenarios.partition_halves(c, via="toxiproxy"))
    c.wait_converged(60)
    assert c.proxies.active() == []  # heal enabled every proxy again
    if iptables:
        assert_outcome(scenarios.partition_halves(c, via="iptables"))
        c.wait_converged(60)


def slow_links_and_client_reset(c: Any) -> None:
    """1. 200 ms on every link of one replica; 5. 50 KB/s on the owner's links with 256 KB jobs; 6. a client's
    link reset mid-submit."""
    out = scenarios.slow_successor(c, ms=200)
    assert_valid(out)
    # acks that needed the slow replica's copy waited for it: 200 ms each way on its links
    assert out.submit_latency(0.99) >= 0.2, out.timing["latencies"][-20:]
    assert c.proxies.active() == []

    out = scenarios.slow_owner_big_jobs(c, rate_kb=50, jobs=12)
    assert_valid(out, acknowledged=12)
    assert not any("500" in e for e in out.submit_errors()), out.submit_errors()
    # a job through n1's client link carries 256 KB at 50 KB/s: its ack took seconds
    assert out.submit_latency(0.99) >= 256 / 50 * 0.8, out.timing["latencies"]

    c.wait_converged(60)
    assert_valid(scenarios.client_link_reset(c, seconds=2.0), acknowledged=300)


def flapping(c: Any) -> scenarios.Outcome:
    """3. n1 <-> n2 down and up every 1-2 s for 30 s: nothing lost; the ring changes are reported."""
    out = scenarios.flapping_link(c, seconds=30.0)
    assert_valid(out, acknowledged=300)
    assert out.fault["flips"] >= 15, out.fault  # down/up every 1-2 s for 30 s
    return out
