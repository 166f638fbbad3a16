"""Trust boundaries (issue 12): a client is not a peer, a peer speaks only for itself and only about what
the ring makes it responsible for, a ring that breaks the invariants is refused (and never persisted), the
dashboard cookie is a session value, not the token."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import uuid

import aiohttp
import msgspec

import jobgrid
from jobgrid.examples import add


TOKEN = "trust-token-" + uuid.uuid4().hex
_enc = msgspec.msgpack.Encoder()
BOGUS_RING = {"ring": {"epoch": 2 ** 64 - 1, "proposer": "evil",
                       "members": [{"id": "evil1", "location": 7, "ip": "127.0.0.1", "port": 9}]}}


def call(node, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    conn = http.client.HTTPConnection(node.host, node.port, timeout=30)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def client_auth(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


def peer_auth(cluster, node_id: str) -> dict:
    """The peer credential a node of `cluster` holds, naming `node_id` as the sending node."""
    secret = getattr(cluster, "peer_secret", None) or cluster.token  # (before issue 12 the token was both)
    return {"Authorization": f"Bearer {secret}", "X-Jobgrid-Node": node_id}


def restart(cluster, node) -> None:
    cluster.kill(node)
    cluster.start(node)
    cluster.wait_healthy(node, 60)


# ---- roles: a client credential is not a peer credential --------------------------------------------------

def test_a_client_token_cannot_speak_as_a_peer_over_http_or_the_stream(cluster_factory) -> None:
    c = cluster_factory(runners=0, replicas=1, token=TOKEN)
    n = c.up(1)[0]
    before = c.get(n, "/state")["ring"]
    status, _, raw = call(n, "POST", "/peer/ring", client_auth(), json.dumps(BOGUS_RING).encode())
    assert status == 403 and "peer" in json.loads(raw)["error"], (status, raw)
    for path in ("/peer/replicate", "/peer/lookup", "/peer/lock", "/peer/heartbeat"):
        assert call(n, "POST", path, client_auth(), b"{}")[0] == 403, path
    assert call(n, "GET", "/peer/ring", client_auth())[0] == 403

    async def stream() -> tuple[int, bytes]:
        async with aiohttp.ClientSession(headers=client_auth()) as s:
            async with s.ws_connect(n.url + "/stream") as ws:  # the stream itself is a client route...
                await ws.send_bytes(_enc.encode((1, "/peer/ring", None, _enc.encode(BOGUS_RING))))
                mid, st, body = msgspec.msgpack.decode(await ws.receive_bytes(timeout=10))
                return st, body  # ...its peer frames are not
    st, body = asyncio.run(stream())
    assert st == 403 and "peer" in json.loads(body)["error"], (st, body)
    assert c.get(n, "/state")["ring"] == before and c.get(n, "/state")["member"]
    restart(c, n)  # nothing bad was persisted
    assert c.get(n, "/state")["member"]


def test_the_reviews_bogus_ring_gets_a_4xx_even_from_a_peer_and_a_restart_works(cluster_factory) -> None:
    c = cluster_factory(runners=0, replicas=1, token=TOKEN)
    n = c.up(1)[0]
    st0 = c.get(n, "/state")
    status, _, raw = call(n, "POST", "/peer/ring", peer_auth(c, "evil1"), json.dumps(BOGUS_RING).encode())
    assert 400 <= status < 500, (status, raw)
    ring = {"epoch": st0["epoch"] + 1, "proposer": "evil1",
            "members": [{"id": "evil1", "location": 7, "ip": "127.0.0.1", "port": 9}]}
    for sender in ("evil1", st0["id"]):  # a stranger's ring without this node, or in this node's name
        status, _, raw = call(n, "POST", "/peer/ring", peer_auth(c, sender), json.dumps({"ring": ring}).encode())
        assert 400 <= status < 500, (sender, status, raw)
    st1 = c.get(n, "/state")
    assert st1["ring"] == st0["ring"] and st1["member"], st1["ring"]
    restart(c, n)
    assert c.get(n, "/state")["member"]


# ---- forged and dropped results -----------------------------------------------------------------------------

def test_replicas_in_the_nodes_own_name_cannot_forge_or_drop_its_results(cluster_factory) -> None:
    c = cluster_factory(runners=1, replicas=1, token=TOKEN)
    n = c.up(1)[0]
    me = c.get(n, "/state")["id"]
    with jobgrid.Client(n.url, token=TOKEN) as client:
        done = client.submit(add, 2, 3)
        assert done.result(60) == 5
        late = client.submit_call("jobgrid.examples:add", 1, 1, _opts={"delay": 3600})  # queued for an hour
        fake = {"job_id": late.job_id, "state": "succeeded", "value_format": "json",
                "value": base64.b64encode(b"666").decode()}
        for auth in (client_auth(), peer_auth(c, me)):
            forged = {"sender": me, "epoch": 0, "results": [fake], "drop": [done.job_id]}
            status, _, raw = call(n, "POST", "/peer/replicate", auth, json.dumps(forged).encode())
            assert status in (403, 409, 422), (status, raw)
        assert client.wait_result(done.job_id, timeout=5).state == "succeeded"
        st, _, raw = call(n, "GET", f"/jobs/{late.job_id}", client_auth())
        assert st == 200 and json.loads(raw)["state"] == "queued", raw


# ---- the dashboard cookie -------------------------------------------------------------------------------------

def test_the_cookie_is_a_session_value_set_only_for_a_valid_url_token(cluster_factory) -> None:
    c = cluster_factory(runners=0, replicas=1, token=TOKEN)
    n = c.up(1)[0]
    # a valid header with a junk URL token: no cookie for the junk
    status, headers, _ = call(n, "GET", "/?token=junk-junk-junk-junk", client_auth())
    assert "jobgrid_token=junk" not in headers.get("set-cookie", ""), headers
    status, headers, _ = call(n, "GET", f"/?token={TOKEN}")
    assert status == 302, status
    cookie = headers["set-cookie"]
    value = cookie.split(";")[0].split("=", 1)[1]
    assert TOKEN not in cookie and value and "secure" not in cookie.lower(), cookie  # plain HTTP: not Secure
    assert call(n, "GET", "/state", {"Cookie": f"jobgrid_session={value}"})[0] == 200
    assert call(n, "GET", "/state", {"Cookie": f"jobgrid_session={value}x"})[0] == 401
