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
import pytest

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


# ---- scopes: a read-only token ------------------------------------------------------------------------------------

READ_TOKEN = "read-token-" + uuid.uuid4().hex


def test_a_read_only_token_reads_everything_and_runs_nothing(cluster_factory, tmp_path) -> None:
    read_file = tmp_path / "read-token"
    read_file.write_text(READ_TOKEN)
    c = cluster_factory(runners=1, replicas=1, token=TOKEN, extra_args=["--read-token-file", str(read_file)])
    n = c.up(1)[0]
    with jobgrid.Client(n.url, token=TOKEN) as client:
        jid = client.submit(add, 2, 3).job_id
        assert client.wait_result(jid, timeout=60).state == "succeeded"
    ro = client_auth(READ_TOKEN)
    for path in ("/state", "/metrics", "/servers", "/jobs", f"/jobs/{jid}", f"/jobs/{jid}/result", "/results",
                 "/", "/stats"):
        assert call(n, "GET", path, ro)[0] == 200, path
    assert call(n, "POST", "/results/wait", ro, json.dumps({"ids": [jid], "timeout": 0}).encode())[0] == 200
    spec = {"id": "ro-1", "kind": "call", "target": "jobgrid.examples:noop"}
    for path, body in (("/jobs", {"jobs": [spec]}), ("/jobs/cancel", {"ids": [jid]})):
        status, _, raw = call(n, "POST", path, ro, json.dumps(body).encode())
        assert status == 403 and "read-only" in json.loads(raw)["error"], (path, status, raw)
    assert call(n, "POST", "/peer/lookup", ro, b'{"ids": ["x"]}')[0] == 403
    # the Python client (over the stream): waits work, a submission gets a clear 403
    with jobgrid.Client(n.url, token=READ_TOKEN) as reader:
        assert reader.wait_result(jid, timeout=10).state == "succeeded"
        with pytest.raises(jobgrid.errors.ProtocolError) as e:
            reader.submit(add, 1, 1).result(30)
        assert e.value.status == 403 and "read-only" in str(e.value)
    # the dashboard link with the read-only token: a read-only session
    status, headers, _ = call(n, "GET", f"/?token={READ_TOKEN}")
    cookie = headers["set-cookie"].split(";")[0]
    assert READ_TOKEN not in cookie
    assert call(n, "GET", "/state", {"Cookie": cookie})[0] == 200
    assert call(n, "POST", "/jobs", {"Cookie": cookie, "Origin": n.url}, json.dumps({"jobs": [spec]}).encode())[0] == 403


# ---- a deployment that refuses code ----------------------------------------------------------------------------------

def test_a_node_that_takes_only_registered_functions_refuses_code(cluster_factory) -> None:
    c = cluster_factory(runners=1, replicas=1, token=TOKEN,
                        extra_args=["--allow-kinds", "call", "--allow-modules", "jobgrid.examples,jobgrid.cli"])
    n = c.up(1)[0]
    with jobgrid.Client(n.url, token=TOKEN) as client:
        assert client.submit_call("jobgrid.examples:add", 2, 3).result(60) == 5
        for submit, words in ((lambda: client.submit(add, 1, 1), "does not accept pickle jobs"),
                              (lambda: client.submit_script("print(1)"), "does not accept script jobs"),
                              (lambda: client.submit_call("os:system", "true"), "not in this grid's allowed modules"),
                              (lambda: client.submit_call("jobgrid.examples:os.system", "true"), "public top-level")):
            with pytest.raises(jobgrid.errors.ProtocolError) as e:
                submit().result(30)
            assert e.value.status == 403 and words in str(e.value), str(e.value)
        # a name an allowed module imported from elsewhere (jobgrid.cli: `from pathlib import Path`) is refused
        # by the job process where the target is resolved, before it is called
        with pytest.raises(jobgrid.errors.JobFailed) as e:
            client.submit_call("jobgrid.cli:Path", "/").result(60)
        assert "outside the allowed modules" in str(e.value), str(e.value)


# ---- mutual TLS: the certificate is the peer credential ---------------------------------------------------------------

def test_mutual_tls_peers_need_no_secret_and_speak_only_for_what_their_certificate_covers(cluster_factory,
                                                                                          tmp_path) -> None:
    import os
    import ssl

    import trustme
    octet = 160 + os.getpid() % 30
    hosts = [f"127.0.0.{octet + i}" for i in range(3)]
    ca = trustme.CA()
    paths = {k: tmp_path / f"{k}.pem" for k in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert = ca.issue_cert(*hosts)
    cert.private_key_pem.write_to_path(str(paths["key"]))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(paths["cert"]), append=i > 0)
    ctx = ssl.create_default_context(cafile=str(paths["ca"]))
    c = cluster_factory(runners=1, replicas=2, first_octet=octet, ssl_context=ctx,
                        extra_args=["--tls-cert", str(paths["cert"]), "--tls-key", str(paths["key"]),
                                    "--tls-ca", str(paths["ca"])])
    c.token = TOKEN  # a client token and no peer secret: the nodes prove themselves with their certificates
    assert c.peer_secret is None
    nodes = c.up(3)
    with jobgrid.Client([n.url for n in nodes], token=TOKEN, ssl=ctx) as client:
        assert [f.result(90) for f in [client.submit(add, i, i) for i in range(6)]] == [2 * i for i in range(6)]
    ids = [c.get(n, "/state")["id"] for n in nodes]

    def post(context: ssl.SSLContext, headers: dict, body: dict) -> tuple[int, bytes]:
        import http.client as hc
        conn = hc.HTTPSConnection(nodes[1].host, nodes[1].port, timeout=30, context=context)
        try:
            conn.request("POST", "/peer/heartbeat", body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json", **headers})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()
    conn = http.client.HTTPSConnection(nodes[0].host, nodes[0].port, timeout=30, context=ctx)
    conn.request("GET", f"/?token={TOKEN}")
    cookie = conn.getresponse().getheader("Set-Cookie")
    conn.close()
    assert "secure" in cookie.lower() and TOKEN not in cookie, cookie  # under TLS the cookie is Secure
    beat = lambda i: {"sender": ids[i], "epoch": 0, "active": 0}  # noqa: E731
    assert post(ctx, client_auth(), beat(0))[0] == 403  # a client: no certificate, a client token
    one = ca.issue_cert(hosts[0])  # node 1's own certificate: it covers node 1's address only
    as_n1 = ssl.create_default_context(cafile=str(paths["ca"]))
    one.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "n1.pem"))
    as_n1.load_cert_chain(str(tmp_path / "n1.pem"))
    assert post(as_n1, {"X-Jobgrid-Node": ids[0]}, beat(0))[0] == 200
    status, raw = post(as_n1, {"X-Jobgrid-Node": ids[2]}, beat(2))  # node 1 speaking as node 3
    assert status == 403 and "does not cover" in json.loads(raw)["error"], raw
    status, raw = post(as_n1, {"X-Jobgrid-Node": ids[0]}, beat(2))  # naming itself, sending as node 3
    assert status == 403 and "comes from" in json.loads(raw)["error"], raw
    stranger = trustme.CA().issue_cert(hosts[0])  # another CA's certificate is no credential at all
    as_stranger = ssl.create_default_context(cafile=str(paths["ca"]))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "x.pem"))
    as_stranger.load_cert_chain(str(tmp_path / "x.pem"))
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        post(as_stranger, {"X-Jobgrid-Node": ids[0]}, beat(0))


# ---- the local quick start: no credentials, still no borrowed browsers ---------------------------------------------------

def test_an_open_node_refuses_foreign_origins_and_rebound_host_names(cluster_factory) -> None:
    c = cluster_factory(runners=0, replicas=1)
    n = c.up(1)[0]
    assert call(n, "POST", "/peer/lookup", {}, b'{"ids": ["x"]}')[0] == 200  # one trust domain on loopback
    assert call(n, "GET", "/state", {"Host": "rebound.example:80"})[0] == 403
    assert call(n, "GET", "/state", {"Host": f"localhost:{n.port}"})[0] == 200

    async def ws(origin: str | None) -> int:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(n.url + "/stream", origin=origin):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status
    assert asyncio.run(ws("http://evil.example")) == 403
    assert asyncio.run(ws(f"http://{n.host}:{n.port + 1}")) == 403
    assert asyncio.run(ws(n.url)) == 101
    assert asyncio.run(ws(None)) == 101  # not a browser


def test_a_token_without_a_peer_credential_is_refused_at_start(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from harness.local import free_port
    env = {**os.environ, "JOBGRID_TOKEN": TOKEN, "COLUMNS": "300"}
    env.pop("JOBGRID_PEER_SECRET", None)
    r = subprocess.run([sys.executable, "-m", "jobgrid.cli", "server", str(free_port()), "--runners", "0",
                        "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "peer secret" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_dashboard_responses_carry_the_browser_headers(cluster_factory) -> None:
    c = cluster_factory(runners=0, replicas=1, token=TOKEN)
    n = c.up(1)[0]
    for path in ("/", "/job/x", "/static/app.js"):
        status, headers, _ = call(n, "GET", path, client_auth())
        assert status == 200, path
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, csp
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"


def test_credentials_and_policies_come_from_env_files_and_jobgrid_toml(cluster_factory, tmp_path) -> None:
    ro = tmp_path / "ro-token"
    ro.write_text(READ_TOKEN + "\n")
    toml = tmp_path / "jobgrid.toml"
    toml.write_text('[server]\nallow_kinds = ["call", "script"]\nmax_streams_per_client = 1\n')
    c = cluster_factory(runners=0, replicas=1, token=TOKEN, env={"JOBGRID_READ_TOKEN_FILE": str(ro)},
                        extra_args=["--config", str(toml)])
    n = c.up(1)[0]
    assert call(n, "GET", "/state", client_auth(READ_TOKEN))[0] == 200
    spec = {"id": "pk-1", "kind": "pickle", "payload": base64.b64encode(b"x").decode()}
    status, _, raw = call(n, "POST", "/jobs", client_auth(), json.dumps({"jobs": [spec]}).encode())
    assert status == 403 and "accepted: call, script" in json.loads(raw)["error"], raw

    async def two_streams() -> int:
        async with aiohttp.ClientSession(headers=client_auth()) as s:
            async with s.ws_connect(n.url + "/stream"):
                try:
                    async with s.ws_connect(n.url + "/stream"):
                        return 101
                except aiohttp.WSServerHandshakeError as e:
                    return e.status
    assert asyncio.run(two_streams()) == 429
