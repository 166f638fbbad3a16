"""Membership smoke test at 8 nodes: seven joiners started at once (the add_lock join storm) end in one ring.

The figures at 8, 16 and 32 nodes (formation time, heartbeat CPU, detection, false removals under load)
come from `make scale` (bench/scale.py) and are in docs/deploy.md; this only checks the outcome, with no
timing asserted.
"""

from __future__ import annotations

import os

from conftest import wait_for


def test_seven_simultaneous_joiners_form_one_ring_with_identical_lists(cluster_factory):
    # a 127.0.254.x block of our own (iptables rules of other tests match addresses, not ports)
    c = cluster_factory(replicas=3, runners=0, first_octet=256 * 254 + 10 + (os.getpid() % 20) * 10)
    seed = c.start(c.add_node())
    c.wait_healthy(seed, 60)
    joiners = [c.add_node() for _ in range(7)]
    for node in joiners:
        c.start(node, join=seed)
    wait_for(c.converged, 120, "8 nodes to report the same 8-member ring")

    lists = c.server_lists()
    assert sorted(lists) == sorted(n.name for n in c.nodes)
    views = {(sl["epoch"], frozenset((s["id"], s["ip"], s["port"], s["location"]) for s in sl["servers"]))
             for sl in lists.values()}
    assert len(views) == 1, views  # identical server lists everywhere
    epoch, members = views.pop()
    assert {m[1] for m in members} == {n.host for n in c.nodes}
    assert len({m[0] for m in members}) == 8 and len({m[3] for m in members}) == 8  # distinct ids, positions
    assert epoch >= 8  # the seed's ring (1) plus one ring change per joiner at least
    for node in c.nodes:  # and each node says it is serving
        assert c.healthy(node), node.name
