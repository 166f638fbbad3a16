"""Today's all-to-all membership (`jobgrid.membership.Membership`) on the same simulated network, for the
comparison: every node heartbeats every other each interval, replies feed `on_reply`, and the leader's
`propose_removals` is asked after every round (in a grid without faults it must propose nothing)."""

from __future__ import annotations

import random

from jobgrid.membership import Membership
from jobgrid.protocol import Heartbeat, HeartbeatReply, RingState
from jobgrid.swim.joins import place

from .net import Address, NetConfig, Network


def steady(n: int, seed: int, periods: float = 4, interval: float = 0.5, failure_timeout: float = 2.0,
           fence_window: float = 1.2) -> dict:
    rng = random.Random(seed)
    net = Network(random.Random(rng.random()), NetConfig())
    founder = RingState(epoch=1, members=[], proposer="n00000")
    members = place(founder, set(), [(f"n{i:05d}", "127.0.0.1", 20000 + i) for i in range(n)])
    ring = RingState(epoch=n, members=members, proposer="n00000")
    addr = {m.id: (m.ip, m.port) for m in members}
    who = {a: i for i, a in addr.items()}
    mems = {m.id: Membership(me=m.id, ring=ring, replicas=3, failure_timeout=failure_timeout,
                             fence_window=fence_window, started=0.0) for m in members}
    proposals = 0

    def deliver(src: Address, dst: Address, msg: object) -> None:
        me = who[dst]
        if isinstance(msg, Heartbeat):
            mems[me].on_heartbeat(msg.sender, net.now, msg.active, msg.backup)
            net.send(dst, src, HeartbeatReply(epoch=ring.epoch, active=0, member=True), deliver)
            sent_at[(me, msg.sender)] = msg.sent_at
        else:
            peer = who[src]
            mems[me].on_reply(peer, sent_at.get((peer, me), 0.0))

    sent_at: dict[tuple[str, str], float] = {}

    def beat(me: str) -> None:
        nonlocal proposals
        for m in members:
            if m.id != me:
                net.send(addr[me], addr[m.id], Heartbeat(sender=me, epoch=ring.epoch, active=0, sent_at=net.now), deliver)
        if mems[me].propose_removals(net.now) is not None:
            proposals += 1
        if net.now + interval <= periods * interval:
            net.at(net.now + interval, lambda: beat(me))

    for m in members:
        net.at(rng.random() * interval, lambda me=m.id: beat(me))
    net.run_until(periods * interval + 1.0)
    kinds = net.kinds()
    total = sum(kinds.values())
    quorum = sum(1 for m in mems.values() if m.has_quorum(net.now - 1.0))
    return {"nodes": n, "periods": periods, "messages_per_node_per_period": round(total / n / periods, 3),
            "by_kind": dict(kinds), "removals_proposed": proposals, "nodes_with_quorum": quorum}
