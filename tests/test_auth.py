"""The pure decisions at the node's edges (node/auth.py) and the ring invariants (Membership.ring_problem,
push_problem): inputs in, decisions out, no server."""

from __future__ import annotations

import pytest

from jobgrid.errors import ConfigError
from jobgrid.membership import MAX_EPOCH_STEP, Membership
from jobgrid.node.auth import (
    Caller, Credentials, code_refusal, host_ok, identify, may, named_ok, origin_ok, required_role,
)
from jobgrid.protocol import MAX_EPOCH, Member, RingState
from jobgrid.settings import JOB_KINDS, TLS, NodeSettings

FULL, READ, PEER = "f" * 20, "r" * 20, "p" * 20
CREDS = Credentials.of(FULL, READ, PEER, mtls=False)


def who(creds: Credentials = CREDS, auth: str | None = None, cookie: str | None = None, node: str | None = None,
        cert: dict | None = None):
    return identify(creds, authorization=auth, cookie=cookie, node_header=node, peercert=cert)


def test_each_credential_gives_its_role_and_nothing_else_gets_in() -> None:
    assert who(auth=f"Bearer {FULL}").role == "full"
    assert who(auth=f"Bearer {READ}").role == "read"
    peer = who(auth=f"Bearer {PEER}", node="n1")
    assert peer.role == "peer" and peer.node == "n1"
    assert who(auth=f"Bearer {FULL}", node="n1").node is None  # only peers name a node
    assert who(auth="Bearer wrong-wrong-wrong-wrong") is None
    assert who() is None
    assert isinstance(who(auth=FULL), str)  # no scheme: malformed, 401 with a reason
    for odd in ("Bearer \udcff\udcfe", "Bearer été-token-0123456789", "Bearer a b"):
        assert not isinstance(who(auth=odd), Caller), odd


def test_the_cookie_is_a_session_value_that_never_equals_a_token() -> None:
    s_full, s_read = CREDS.session(FULL.encode()), CREDS.session(READ.encode())
    assert FULL not in s_full and s_full != s_read
    assert who(cookie=s_full) == Caller("full", "cookie")
    assert who(cookie=s_read).role == "read"
    assert who(cookie=FULL) is None and who(cookie="\udcff") is None
    assert who(cookie=PEER) is None  # the peer secret is never a cookie


def test_open_nodes_and_client_open_nodes() -> None:
    assert who(Credentials()).role == "peer"  # no credential at all: one trust domain (loopback only)
    only_peer = Credentials.of(None, None, PEER, False)
    assert who(only_peer).role == "full"  # clients need nothing, peers still need the secret
    assert who(only_peer, auth=f"Bearer {PEER}").role == "peer"


def test_mutual_tls_makes_a_verified_certificate_a_peer_named_by_its_addresses() -> None:
    creds = Credentials.of(FULL, None, None, mtls=True)
    cert = {"subject": ((("commonName", "node-a"),),), "subjectAltName": (("IP Address", "10.0.0.1"),
                                                                           ("DNS", "a.grid"))}
    c = who(creds, cert=cert, node="n1")
    assert c.role == "peer" and c.names == frozenset({"10.0.0.1", "a.grid", "node-a"})
    assert named_ok(c, "n1", "10.0.0.1") is None
    assert "does not cover" in named_ok(c, "n1", "10.0.0.2")
    assert "comes from" in named_ok(c, "n2", "10.0.0.1")
    assert who(creds, cert={}, auth=f"Bearer {FULL}").role == "full"  # no certificate: a client


def test_routes_need_their_role() -> None:
    assert required_role("POST", "/peer/replicate") == "peer" and required_role("GET", "/peer/ring") == "peer"
    assert required_role("POST", "/jobs") == "full" and required_role("POST", "/jobs/cancel") == "full"
    for method, path in (("GET", "/state"), ("GET", "/metrics"), ("POST", "/results/wait"), ("GET", "/"),
                         ("GET", "/stream"), ("GET", "/jobs/x/result")):
        assert required_role(method, path) == "read", path
    read, full, peer = Caller("read", "token"), Caller("full", "token"), Caller("peer", "secret", "n1")
    assert may(peer, "peer") and may(peer, "full") and may(full, "read") and not may(full, "peer")
    assert not may(read, "full")
    assert "must name their sending node" in named_ok(Caller("peer", "secret"), "n1", None)
    assert named_ok(Caller("peer", "open"), "n1", None) is None  # an open node checks nothing


def test_browser_checks() -> None:
    assert origin_ok(None, "http", "127.0.0.1:8000")
    assert origin_ok("http://127.0.0.1:8000", "http", "127.0.0.1:8000")
    assert not origin_ok("http://127.0.0.1:9999", "http", "127.0.0.1:8000")  # same site, other origin
    assert not origin_ok("null", "http", "127.0.0.1:8000")
    assert not origin_ok("http://127.0.0.1:8000", "https", "127.0.0.1:8000")
    own = frozenset({"node1"})
    for host in ("127.0.0.1:8000", "[::1]:8000", "localhost:1", "node1:8000", "x.localhost"):
        assert host_ok(host, own), host
    assert not host_ok("attacker.example:8000", own)


def test_a_code_refusing_node_takes_only_allowed_calls() -> None:
    kinds, mods = frozenset({"call"}), ("mypkg",)
    assert "does not accept pickle jobs" in code_refusal("pickle", None, kinds, mods)
    assert "does not accept script jobs" in code_refusal("script", None, kinds, mods)
    assert code_refusal("call", "mypkg:run", kinds, mods) is None
    assert code_refusal("call", "mypkg.tasks:run", kinds, mods) is None
    assert "not in this grid's allowed modules" in code_refusal("call", "os:system", kinds, mods)
    assert "not in this grid's allowed modules" in code_refusal("call", "mypkgx:run", kinds, mods)
    assert "public top-level function" in code_refusal("call", "mypkg:os.system", kinds, mods)
    assert "public top-level function" in code_refusal("call", "mypkg:_private", kinds, mods)
    assert code_refusal("call", "os:system", kinds, ()) is None  # no allow-list: any module (documented)
    assert code_refusal("pickle", None, JOB_KINDS, ()) is None


def test_settings_refuse_a_token_without_a_peer_credential(tmp_path) -> None:
    base = dict(port=8000, data_dir=tmp_path)
    with pytest.raises(ConfigError, match="peer secret"):
        NodeSettings(token=FULL, **base)
    NodeSettings(token=FULL, peer_secret=PEER, **base)
    NodeSettings(token=FULL, tls=TLS(cert=tmp_path / "c", key=tmp_path / "k", ca=tmp_path / "ca"), **base)
    with pytest.raises(ConfigError, match="must all differ"):
        NodeSettings(token=FULL, peer_secret=FULL, **base)
    with pytest.raises(ConfigError, match="needs a full cluster token"):
        NodeSettings(read_token=READ, peer_secret=PEER, **base)
    with pytest.raises(ConfigError, match="allow-kinds"):
        NodeSettings(allow_kinds=frozenset({"shell"}), **base)
    with pytest.raises(ConfigError, match="not a module name"):
        NodeSettings(allow_modules=("my pkg",), **base)


# ---- ring invariants ----------------------------------------------------------------------------------------------

def m(i: str, loc: int, ip: str = "127.0.0.1", port: int = 8000) -> Member:
    return Member(id=i, location=loc, ip=ip, port=port)


A, B, C = m("a", 0, port=8001), m("b", 100, port=8002), m("c", 200, port=8003)


def mem(me: str = "a", members=(A, B, C), epoch: int = 5) -> Membership:
    return Membership(me=me, ring=RingState(epoch=epoch, members=list(members), proposer="a"), replicas=3,
                      failure_timeout=2.0, fence_window=1.2)


def test_ring_invariants() -> None:
    x = mem()
    me = ("127.0.0.1", 8001)
    assert x.ring_problem(RingState(epoch=6, members=[A, B], proposer="a"), me) is None
    assert "without members" in x.ring_problem(RingState(epoch=6, members=[], proposer=""), me)
    assert "duplicate" in x.ring_problem(RingState(epoch=6, members=[A, m("b", 0)], proposer="a"), me)
    assert "not a member of the ring it proposes" in x.ring_problem(
        RingState(epoch=6, members=[A, B], proposer="evil"), me)
    assert "jumps" in x.ring_problem(RingState(epoch=6 + MAX_EPOCH_STEP, members=[A], proposer="a"), me)
    assert "too large" in x.ring_problem(RingState(epoch=MAX_EPOCH, members=[A], proposer="a"), me)
    assert "invalid address" in x.ring_problem(RingState(epoch=6, members=[A, m("b", 9, ip="a b")], proposer="a"), me)
    assert "puts this node" in x.ring_problem(RingState(epoch=6, members=[m("a", 0, port=1)], proposer="a"), me)
    # a fresh node (no ring yet) may take any epoch that can still grow
    assert mem(members=(), epoch=0).ring_problem(RingState(epoch=123456789, members=[B], proposer="b")) is None


def test_announced_rings_come_from_members_or_the_admitted_joiner() -> None:
    x = mem()
    d = m("d", 50, port=8004)
    joined = RingState(epoch=6, members=[A, B, C, d], proposer="d")
    assert x.push_problem(joined, "b", None) is None  # a member passes it on
    assert x.push_problem(joined, "d", "d") is None  # the joiner holding our add_lock
    assert "neither a member" in x.push_problem(joined, "d", None)  # ...without the lock
    assert "neither a member" in x.push_problem(RingState(epoch=7, members=[A, B, C, d], proposer="d"), "d", "d")
    assert "neither a member" in x.push_problem(RingState(epoch=6, members=[A, B, d], proposer="d"), "d", "d")
    assert "neither a member" in x.push_problem(joined, None, None)
    # a ring without this node must be proposed by a member of its ring (the leader removing it)
    assert x.push_problem(RingState(epoch=6, members=[B, C], proposer="b"), "b", None) is None
    assert "without this node" in x.push_problem(RingState(epoch=6, members=[B, d], proposer="d"), "b", None)
