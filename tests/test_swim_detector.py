"""SWIM failure detection, fed inputs and compared outputs: no sockets, no sleeps."""

from __future__ import annotations

import random

import pytest

from jobgrid.swim.config import SwimConfig
from jobgrid.swim.detector import ALIVE, DEAD, SUSPECT, Detector
from jobgrid.swim.messages import Ack, NodeUpdate, PingReq

CFG = SwimConfig()  # period 0.5, probe timeout 0.2, k = 3
HDR = {"ip": "127.0.0.1", "port": 1, "epoch": 1, "proposer": "a"}


def det(members=("a", "b", "c", "d", "e"), me="a") -> Detector:
    d = Detector(me, CFG, random.Random(7), now=0.0)
    d.set_members(list(members), 0.0)
    d.next_period = 1.0
    return d


def ack(seq: int, about: str, sender: str | None = None) -> Ack:
    return Ack(sender=sender or about, seq=seq, about=about, **HDR)


def test_one_probe_per_period_and_every_member_once_per_round():
    d = det()
    targets = []
    for i in range(8):
        out = d.tick(1.0 + i * 0.5)
        assert len(out) == 1 and out[0][1] == "ping" and out[0][0] == out[0][3]
        targets.append(out[0][0])
        d.on_ack(ack(out[0][2], out[0][0]))
    assert sorted(targets[:4]) == ["b", "c", "d", "e"]  # randomised round-robin: each once per round
    assert sorted(targets[4:]) == ["b", "c", "d", "e"]
    assert d.tick(1.1) == [] and d.next_timer() == pytest.approx(1.0 + 8 * 0.5)


def test_an_answered_probe_leaves_the_target_alive_and_refreshes_contact():
    d = det()
    [(target, _, seq, _)] = d.tick(1.0)
    assert d.on_ack(ack(seq, target)) is None
    assert d.tick(1.25) == []  # no indirect probes once answered
    d.tick(1.5)
    assert d.state(target) == ALIVE and d.last_ack == 1.0 and d.outcomes == [True]


def test_silence_brings_indirect_probes_then_suspicion():
    d = det()
    [(target, _, seq, _)] = d.tick(1.0)
    assert d.next_timer() == pytest.approx(1.2)
    out = d.tick(1.2)
    helpers = [o[0] for o in out]
    assert len(helpers) == 3 and target not in helpers and "a" not in helpers
    assert all(o[1] == "ping-req" and o[2] == seq and o[3] == target for o in out)
    d.tick(1.5)  # the period ends with no ack by either route
    assert d.state(target) == SUSPECT and d.outcomes == [False]
    assert ("suspect", target) in d.events
    assert any(u.node == target and u.state == SUSPECT and u.origin == "a" for u in d.queue.pending())


def test_an_ack_forwarded_by_a_helper_clears_the_probe():
    d = det()
    [(target, _, seq, _)] = d.tick(1.0)
    d.tick(1.2)
    d.on_ack(ack(seq, about=target, sender="c"))
    d.tick(1.5)
    assert d.state(target) == ALIVE and d.outcomes == [True]


def test_a_helper_probes_for_the_requester_and_forwards_the_answer():
    d = det(me="c")
    target, my_seq = d.on_ping_req(PingReq(sender="a", seq=41, target="e", **HDR), now=1.0)
    assert target == "e"
    assert d.on_ack(ack(my_seq, "e")) == ("a", 41)
    assert d.on_ack(ack(my_seq, "e")) is None  # only once


def test_suspicion_runs_out_into_death_after_the_maximum_without_confirmations():
    d = det()  # 5 members: k = 2 confirmations wanted, min = 4 periods (log10 5 < 1), max = 6 x min
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=0, origin="c"), 10.0)
    s = d.suspicions["b"]
    assert (s.min, s.max, s.k) == (2.0, 12.0, 2) and s.deadline == 22.0
    d.tick(21.9)
    assert d.state("b") == SUSPECT
    d.tick(22.0)
    assert d.state("b") == DEAD and ("dead", "b") in d.events


def test_independent_confirmations_shorten_a_suspicion_to_its_minimum():
    d = det()
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=0, origin="c"), 10.0)
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=0, origin="c"), 10.5)  # same accuser: nothing
    assert d.suspicions["b"].deadline == 22.0
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=0, origin="d"), 11.0)
    # memberlist: max - log(n+1)/log(k+1) * (max - min) with n = 1, k = 2
    assert d.suspicions["b"].deadline == pytest.approx(10.0 + 12.0 - (0.6309297535714574 * 10.0))
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=0, origin="e"), 11.5)
    assert d.suspicions["b"].deadline == 12.0  # the minimum
    d.tick(12.0)
    assert d.state("b") == DEAD


def test_a_suspected_member_refutes_with_a_higher_incarnation():
    d = det(me="b")
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=0, origin="a"), 1.0)
    assert d.incarnation == 1
    assert NodeUpdate(node="b", state=ALIVE, incarnation=1, origin="b") in d.queue.pending()
    d.apply(NodeUpdate(node="b", state=DEAD, incarnation=4, origin="a"), 2.0)
    assert d.incarnation == 5  # above the accusation


def test_alive_at_a_higher_incarnation_overrides_suspicion_and_lower_ones_do_not():
    d = det()
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=2, origin="c"), 1.0)
    d.apply(NodeUpdate(node="b", state=ALIVE, incarnation=2, origin="b"), 1.1)
    assert d.state("b") == SUSPECT  # same incarnation: the suspicion stands
    d.apply(NodeUpdate(node="b", state=ALIVE, incarnation=3, origin="b"), 1.2)
    assert d.state("b") == ALIVE and "b" not in d.suspicions
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=2, origin="c"), 1.3)
    assert d.state("b") == ALIVE  # an old accusation


def test_alive_count_follows_every_transition():
    d = det()
    assert d.alive_count() == 5
    d.apply(NodeUpdate(node="b", state=SUSPECT, incarnation=0, origin="c"), 1.0)
    d.apply(NodeUpdate(node="c", state=DEAD, incarnation=0, origin="d"), 1.0)
    assert d.alive_count() == 3
    d.apply(NodeUpdate(node="b", state=ALIVE, incarnation=1, origin="b"), 1.0)
    d.set_members(["a", "b", "d", "e", "f"], 2.0)  # c removed from the ring, f joined
    assert d.alive_count() == 5 and d.state("c") == DEAD and d.state("f") == ALIVE


def test_probes_skip_the_dead_and_only_probes_of_live_members_count_for_reachability():
    d = det(members=("a", "b", "c"))
    d.apply(NodeUpdate(node="b", state=DEAD, incarnation=0, origin="c"), 0.5)
    d.apply(NodeUpdate(node="c", state=SUSPECT, incarnation=0, origin="b"), 0.5)
    out = d.tick(1.0)
    assert [o[0] for o in out] == ["c"]  # the dead one is not probed, the suspect one is
    d.tick(1.5)
    assert d.outcomes == []  # c was suspect already: its silence says nothing about our reach


def test_reachability_needs_a_quarter_of_the_recent_probes_answered():
    d = det()
    d.outcomes = [False] * 7 + [True]
    assert not d.reachable()
    d.outcomes = [False] * 6 + [True] * 2
    assert d.reachable()
    d.outcomes = []
    assert d.reachable()


def test_a_member_held_dead_is_pinged_now_and_then_in_case_it_came_back():
    d = det(members=("a", "b", "c"))
    d.apply(NodeUpdate(node="b", state=DEAD, incarnation=0, origin="c"), 0.5)
    pings = []
    for i in range(CFG.reconnect_periods):
        out = d.tick(1.0 + 0.5 * i)
        pings += [o[0] for o in out]
        for to, _, seq, _ in out:
            if to == "c":
                d.on_ack(ack(seq, "c"))
    assert pings.count("b") == 1 and pings.count("c") == CFG.reconnect_periods
