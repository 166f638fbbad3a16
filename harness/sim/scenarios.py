"""The simulated runs and what they check: a join storm forming the grid, a steady stretch (no faults),
crashes, a second join storm, a partition and its heal. Times are in protocol periods; message counts
are messages *sent* per node per period (requests and replies alike)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .net import Address
from .world import SimNode, World


class CheckFailed(AssertionError):
    """A property the simulation checks did not hold."""


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


def _periods(w: World, t: float) -> float:
    return round(t / w.swim.period, 2)


@dataclass
class Report:
    nodes: int
    seed: int
    steps: dict[str, dict] = field(default_factory=dict)


PROBING = ("Ping", "Ack", "PingReq")


def _non_probe(w: World) -> int:
    return sum(c for k, c in w.net.kinds().items() if k not in PROBING)


def form(w: World, n: int, max_periods: float = 400) -> dict:
    """Node 0 founds the grid; the other n - 1 all ask it to join within the same period."""
    nodes = [w.add_node(i) for i in range(n)]
    seed = nodes[0]
    w.found(seed)
    t0 = w.now
    for node in nodes[1:]:
        w.net.at(t0 + w.rng.random() * w.swim.period, lambda node=node: w.join(node, [seed.addr]))
    p = w.run_until_converged(max_periods)
    _check(p is not None, f"{n} joiners did not converge to one ring within {max_periods} periods: {w.ring_views()}")
    sent = Counter({a: 0 for a in w.nodes})
    for (a, _), c in w.net.sent.items():
        sent[a] += c
    ring = w.common_ring()
    assert ring is not None
    _check(len({m.location for m in ring.members}) == n, "two members share a ring position")
    return {"joiners": n - 1, "periods_to_one_ring": p, "ring_changes": ring.epoch - 1,
            "join_and_ring_messages_per_joiner": round(_non_probe(w) / (n - 1), 1),
            "most_sent_by_one_node": max(sent.values()), "by_kind": dict(w.net.kinds())}


def steady(w: World, periods: float) -> dict:
    """No faults: count the traffic, and check nobody is suspected or removed."""
    w.net.sent.clear()
    events0, adopt0, epoch0 = len(w.events), len(w.adoptions), w.common_ring().epoch  # type: ignore[union-attr]
    w.run_periods(periods)
    live = w.live()
    kinds = w.net.kinds()
    suspicions = sum(1 for e in w.events[events0:] if e[2] == "suspect")
    removals = sum(len(a.removed) for a in w.adoptions[adopt0:])
    out = {"periods": periods, "messages_per_node_per_period": round(w.net.sent_by() / len(live) / periods, 3),
           "by_kind_per_node_per_period": {k: round(v / len(live) / periods, 3) for k, v in sorted(kinds.items())},
           "suspicions": suspicions, "removals": removals, "fenced_nodes": sum(
               1 for x in live if not x.mem.has_quorum(w.now))}  # type: ignore[union-attr]
    if w.net.cfg.loss == 0:
        _check(removals == 0 and w.converged() and w.common_ring().epoch == epoch0,  # type: ignore[union-attr]
               f"a member was removed with no fault: {removals} removals")
    return out


def crash(w: World, count: int, max_periods: float = 200) -> dict:
    """SIGKILL `count` random non-leader members at once: how long until they are suspected, declared dead,
    removed by a committed ring, and that ring held by every survivor."""
    live = w.live()
    ring = w.common_ring()
    assert ring is not None
    leader = min(ring.members, key=lambda m: m.location).id
    victims = w.rng.sample([x for x in live if x.id != leader], count)
    t0 = w.now
    ev0, ad0 = len(w.events), len(w.adoptions)
    for v in victims:
        w.crash(v)
    p = w.run_until_converged(max_periods)
    _check(p is not None, f"the survivors did not agree on a ring without the {count} crashed members")
    ids = {v.id for v in victims}
    first_suspect = min(t for t, _, k, s in w.events[ev0:] if k == "suspect" and s in ids)
    first_dead = min(t for t, _, k, s in w.events[ev0:] if k == "dead" and s in ids)
    removing = [a for a in w.adoptions[ad0:] if ids & set(a.removed)]
    committed = min(a.at for a in removing)
    everywhere = max(a.at for a in removing)
    false_removed = sum(len(set(a.removed) - ids) for a in w.adoptions[ad0:])
    _check(false_removed == 0, f"{false_removed} live members were removed along with the crashed ones")
    return {"crashed": count, "first_suspected": _periods(w, first_suspect - t0),
            "first_declared_dead": _periods(w, first_dead - t0),
            "removal_committed": _periods(w, committed - t0), "removal_everywhere": _periods(w, everywhere - t0),
            "dissemination": _periods(w, everywhere - committed), "periods_to_one_ring": p}


def storm(w: World, count: int, max_periods: float = 200) -> dict:
    """`count` new nodes ask to join the running grid within one period, each through a random member."""
    ring = w.common_ring()
    assert ring is not None
    base = max(int(n.base[1:]) for n in w.nodes.values()) + 1
    members = [(m.ip, m.port) for m in ring.members]
    t0 = w.now
    sent0 = _non_probe(w)
    for i in range(count):
        node = w.add_node(base + i)
        contact = w.rng.choice(members)
        w.net.at(t0 + w.rng.random() * w.swim.period, lambda node=node, c=contact: w.join(node, [c]))
    p = w.run_until_converged(max_periods)
    _check(p is not None, f"{count} joiners did not converge to one ring")
    after = w.common_ring()
    assert after is not None
    return {"joiners": count, "periods_to_one_ring": p, "ring_changes": after.epoch - ring.epoch,
            "join_and_ring_messages_per_joiner": round((_non_probe(w) - sent0) / count, 1)}


def partition(w: World, minority: float, periods: float, max_heal_periods: float = 300) -> dict:
    """Cut the grid in two (the leader on the minority side), keep it cut for `periods`, heal.

    Checks: the minority side commits no ring and removes no one; every minority node is fenced before
    the majority commits their removal, and stays fenced; the majority side keeps quorum; after the heal
    every node converges to one ring (the minority's nodes rejoin as new incarnations)."""
    live = w.live()
    ring = w.common_ring()
    assert ring is not None
    leader = min(ring.members, key=lambda m: m.location).id
    others = [x for x in live if x.id != leader]
    w.rng.shuffle(others)
    k = round(minority * len(live))
    small: list[SimNode] = [x for x in live if x.id == leader] + others[: k - 1]
    big = others[k - 1:]
    small_ids = {x.id for x in small}
    w.net.partition([{x.addr for x in small}, {x.addr for x in big}])
    t0 = w.now
    ev0, ad0 = len(w.events), len(w.adoptions)
    first_fenced: dict[str, float] = {}
    fenced_since: dict[str, float] = {}  # the start of the fence that lasts to the end of the cut
    big_fenced_samples = samples = 0
    removal_at = None
    tick = 0.25
    while w.now - t0 < periods * w.swim.period:
        w.run_periods(tick)
        samples += 1
        for x in small:
            if x.mem.has_quorum(w.now):  # type: ignore[union-attr]
                fenced_since.pop(x.id, None)
            else:
                first_fenced.setdefault(x.id, w.now)
                fenced_since.setdefault(x.id, w.now)
        big_fenced_samples += sum(1 for x in big if not x.mem.has_quorum(w.now))  # type: ignore[union-attr]
        if removal_at is None:
            rm = [a.at for a in w.adoptions[ad0:] if set(a.removed) & small_ids]
            removal_at = min(rm) if rm else None
    small_commits = [key for key, t in w.commits.items() if t >= t0 and w.committed_by[key] in small_ids]
    small_removed = sum(len(a.removed) for a in w.adoptions[ad0:] if a.node in small_ids)
    _check(not small_commits and small_removed == 0,
           f"the minority side committed {len(small_commits)} rings and removed {small_removed} members")
    _check(len(fenced_since) == len(small), f"{len(small) - len(fenced_since)} minority nodes hold quorum at the end")
    _check(removal_at is not None, "the majority did not remove the minority while cut off")
    assert removal_at is not None
    late = [i for i, t in fenced_since.items() if t > removal_at]
    _check(not late, f"{len(late)} minority nodes were not fenced for good when the majority removed them")
    first = sorted(_periods(w, t - t0) for t in first_fenced.values())
    for_good = sorted(_periods(w, t - t0) for t in fenced_since.values())
    big_ring = big[0].mem.ring  # type: ignore[union-attr]
    _check(all(m.id not in small_ids for m in big_ring.members), "the majority's ring still lists cut-off nodes")
    w.net.heal()
    t1 = w.now
    p = w.run_until_converged(max_heal_periods)
    _check(p is not None, f"no single ring {max_heal_periods} periods after the heal: {w.ring_views()}")
    after = w.common_ring()
    assert after is not None
    return {"minority": len(small), "majority": len(big), "cut_periods": periods,
            "minority_first_fenced_median": first[len(first) // 2], "minority_first_fenced_last": first[-1],
            "minority_fenced_for_good_median": for_good[len(for_good) // 2],
            "minority_fenced_for_good_last": for_good[-1],
            "majority_removed_minority": _periods(w, removal_at - t0),
            "margin": _periods(w, removal_at - max(fenced_since.values())),
            "majority_fenced_share": round(big_fenced_samples / (samples * len(big)), 5),
            "minority_rings_committed": len(small_commits), "minority_removals": small_removed,
            "rejoined": sum(1 for t, _ in w.removed_nodes if t >= t1), "periods_to_one_ring_after_heal": p,
            "members_after": len(after.members)}


def run_all(n: int, seed: int, minority: float = 0.4, crashes: int | None = None, storm_size: int | None = None,
            cut_periods: float = 60, steady_periods: float = 20, loss: float = 0.0,
            addresses: list[Address] | None = None) -> Report:
    from .net import NetConfig
    w = World(seed=seed, net_cfg=NetConfig(loss=loss))
    rep = Report(nodes=n, seed=seed)
    rep.steps["form"] = form(w, n)
    rep.steps["steady"] = steady(w, steady_periods)
    rep.steps["crash"] = crash(w, crashes if crashes is not None else max(1, n // 100))
    rep.steps["storm"] = storm(w, storm_size if storm_size is not None else max(2, n // 10))
    rep.steps["partition"] = partition(w, minority, cut_periods)
    rep.steps["steady_after"] = steady(w, steady_periods)
    return rep
