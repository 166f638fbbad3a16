"""Security and abuse: the token guards every route but /healthz and never leaks; non-loopback needs a token;
TLS end to end; nothing from the network is unpickled by a server; slow/abusive clients get 429/503;
storage failures give a clear refusal or a 507 without losing stored jobs."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pickle
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import jobgrid
from harness.local import LocalCluster, free_port
from jobgrid.examples import echo_env
from harness.history import HistoryRecorder, check
from jobgrid.node.http import routes

from conftest import needs_root, wait_for

TOKEN = "sec-token-" + uuid.uuid4().hex
JOBGRID = [sys.executable, "-m", "jobgrid.cli"]


def route_table() -> list[tuple[str, str]]:
    """Every (method, path) the node serves, read from the aiohttp app the node builds."""
    from jobgrid.dashboard import add_dashboard
    app = web.Application()
    app.add_routes(routes(None, {}))  # type: ignore[arg-type] - handlers are only listed, never called
    add_dashboard(app, None, {})
    out = set()
    for r in app.router.routes():
        if r.method == "HEAD":
            continue
        info = r.resource.get_info() if r.resource else {}
        path = info.get("path") or info.get("formatter")
        out.add((r.method, path.replace("{id}", "some-job")))
    return sorted(out)


def call(host: str, port: int, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
         ctx: ssl.SSLContext | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPSConnection(host, port, timeout=30, context=ctx) if ctx else \
        http.client.HTTPConnection(host, port, timeout=30)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()



# ---- 1. the token ----------------------------------------------------------------------------------------

def test_every_route_but_healthz_needs_the_token_and_the_token_never_leaks(cluster_factory) -> None:
    table = route_table()
    assert ("GET", "/healthz") in table and ("POST", "/peer/replicate") in table and ("GET", "/") in table
    assert len(table) >= 22
    c = cluster_factory(runners=1, replicas=1, token=TOKEN, env={"JOBGRID_TOKEN": TOKEN})
    n = c.up(1)[0]
    for method, path in table:
        body = b"{}" if method == "POST" else None
        for hdrs in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN},
                     {"Cookie": "jobgrid_token=nope"}):
            status, headers, raw = call(n.host, n.port, method, path, hdrs, body)
            if path == "/healthz":
                assert status == 200, (method, path, status)
            else:
                assert status == 401, (method, path, hdrs, status, raw)
                assert headers.get("www-authenticate") == "Bearer"
                assert "token" in json.loads(raw)["error"]
        if path == "/leave":
            continue  # with the token the node would leave (tests/test_graceful_leave.py: the roles of /leave)
        status, _, raw = call(n.host, n.port, method, path, {"Authorization": f"Bearer {TOKEN}"}, body)
        assert status != 401 and status < 500, (method, path, status, raw)

    # the dashboard link: ?token= becomes an HttpOnly cookie and a redirect without the token
    status, headers, _ = call(n.host, n.port, "GET", f"/?token={TOKEN}")
    assert status == 302 and TOKEN not in headers["location"], headers
    cookie = headers["set-cookie"].split(";")[0]
    assert "httponly" in headers["set-cookie"].lower()
    assert call(n.host, n.port, "GET", "/", {"Cookie": cookie})[0] == 200
    assert call(n.host, n.port, "GET", "/state", {"Cookie": cookie})[0] == 200
    assert call(n.host, n.port, "GET", "/?token=wrong-token-0123456789")[0] == 401

    # the token is not in /state, /servers, the job environment, the process list or the log
    with jobgrid.Client(n.url, token=TOKEN) as client:
        assert client.submit(echo_env, "JOBGRID_TOKEN").result(60) is None
        assert client.submit(echo_env, "HOME").result(60) not in (None, os.environ.get("HOME"))
    for path in ("/state", "/servers", "/metrics", "/results", "/jobs"):
        assert TOKEN not in call(n.host, n.port, "GET", path, {"Authorization": f"Bearer {TOKEN}"})[2].decode()
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert str(n.data_dir) in ps and TOKEN not in ps
    assert TOKEN not in n.log_path.read_text(errors="replace")
    assert oct((c.workdir / "token").stat().st_mode & 0o777) == "0o600"


# ---- 2. no token on a public address ----------------------------------------------------------------------

def test_non_loopback_address_without_token_is_refused_and_insecure_warns(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "JOBGRID_TOKEN"}
    r = subprocess.run([*JOBGRID, "server", str(port), "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d"),
                        "--runners", "0"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert "refusing to listen on 0.0.0.0 without a cluster token" in r.stderr + r.stdout
    assert not (tmp_path / "d").exists()

    p = subprocess.Popen([*JOBGRID, "server", str(port), "--host", "0.0.0.0", "--insecure", "--data-dir",
                          str(tmp_path / "d"), "--runners", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, start_new_session=True)
    try:
        def up() -> bool:
            try:
                return call("127.0.0.1", port, "GET", "/healthz")[0] == 200
            except OSError:
                assert p.poll() is None, p.communicate()
                return False
        wait_for(up, 60, "the --insecure node")
    finally:
        p.terminate()
        _, stderr = p.communicate(timeout=30)
    assert "WARNING: --insecure" in stderr and "arbitrary code" in stderr


# ---- 3. TLS -------------------------------------------------------------------------------------------------

def test_tls_grid_runs_jobs_and_refuses_plain_http_and_untrusted_clients(cluster_factory, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    octet = 200 + os.getpid() % 40
    hosts = [f"127.0.0.{octet + i}" for i in range(3)]
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", *hosts)
    ca_path, cert_path, key_path = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.private_key_pem.write_to_path(str(key_path))
    for i, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(cert_path), append=i > 0)
    ctx = ssl.create_default_context(cafile=str(ca_path))
    c = cluster_factory(runners=1, replicas=2, token=TOKEN, first_octet=octet, ssl_context=ctx,
                        extra_args=["--tls-cert", str(cert_path), "--tls-key", str(key_path),
                                    "--tls-ca", str(ca_path)])
    nodes = c.up(3)
    assert all(n.url.startswith("https://") for n in nodes)
    with jobgrid.Client([n.url for n in nodes], token=TOKEN, ssl=ctx) as client:
        futs = [client.submit(pow, i, 2) for i in range(12)]
        assert [f.result(90) for f in futs] == [i * i for i in range(12)]
    assert len(c.get(nodes[1], "/servers")["servers"]) == 3  # the nodes reached each other over TLS

    try:
        status, _, _ = call(nodes[0].host, nodes[0].port, "GET", "/healthz")
    except (http.client.HTTPException, OSError):
        status = None
    assert status is None, f"plain HTTP to a TLS node answered {status}"
    with pytest.raises(ssl.SSLCertVerificationError):
        call(nodes[0].host, nodes[0].port, "GET", "/healthz", ctx=ssl.create_default_context())
    with jobgrid.Client(nodes[0].url, token=TOKEN, ssl=ssl.create_default_context(), timeout=5) as bad:
        with pytest.raises(Exception) as ei:
            bad.submit(pow, 2, 2).result(30)
        text = repr(ei.value).lower() + repr(ei.value.__cause__).lower() + str(ei.value).lower()
        assert "certificate" in text or "ssl" in text, text


# ---- 4. no unpickling in servers ---------------------------------------------------------------------------

class _Bomb:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        code = f"import os; open({str(self.marker)!r}, 'a').write(str(os.getpid()) + chr(10))"
        return (exec, (code,))


def test_a_malicious_pickle_is_only_ever_unpickled_in_the_job_process(cluster_factory, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Bomb(marker))
    spec = {"id": "bomb-1", "kind": "pickle", "payload": __import__("base64").b64encode(payload).decode()}
    auth = {"Authorization": f"Bearer {TOKEN}"}

    c = cluster_factory(runners=0, replicas=1, token=TOKEN)
    n = c.up(1)[0]
    status, _, raw = call(n.host, n.port, "POST", "/jobs", auth, json.dumps({"jobs": [spec]}).encode())
    assert status == 202, raw
    for path in ("/jobs/bomb-1", "/jobs", "/state", "/jobs/bomb-1/result"):
        assert call(n.host, n.port, "GET", path, auth)[0] < 500
    as_peer = {"Authorization": f"Bearer {c.peer_secret}", "X-Jobgrid-Node": "another-node"}
    for path in ("/peer/replicate", "/peer/handoff", "/peer/report", "/peer/lookup", "/peer/steal"):
        for ctype in ("application/msgpack", "application/json"):
            st, _, raw = call(n.host, n.port, "POST", path, {**as_peer, "Content-Type": ctype},
                              b"\xc1\x80\x04\x95garbage" + payload)
            assert st == 400 and "malformed body" in json.loads(raw)["error"], (path, st, raw)
    assert not marker.exists(), "a server process unpickled a network payload"
    c.stop()

    c2 = cluster_factory(runners=1, replicas=1, token=TOKEN)
    n2 = c2.up(1)[0]
    status, _, raw = call(n2.host, n2.port, "POST", "/jobs", auth, json.dumps({"jobs": [spec]}).encode())
    assert status == 202, raw
    wait_for(marker.exists, 60, "the job process to unpickle the payload")
    pids = {int(x) for x in marker.read_text().split()}
    assert n2.pid not in pids  # the job process did it, not the server
    for pid in pids:  # a worker process of that node: `python -m jobgrid.worker`, child of the server
        status = Path(f"/proc/{pid}/status").read_text()
        ppid = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
        assert ppid == n2.pid and b"jobgrid.worker" in Path(f"/proc/{pid}/cmdline").read_bytes(), (pid, ppid)


# ---- 5. slow and abusive clients -----------------------------------------------------------------------------

def test_a_flood_gets_429_and_503_with_retry_after_and_loses_no_acknowledged_job(cluster_factory) -> None:
    c = cluster_factory(runners=1, replicas=1, token=TOKEN,
                        extra_args=["--max-queued", "15", "--max-conns-per-client", "3"])
    n = c.up(1)[0]
    hist = HistoryRecorder()
    seen: dict[int, int] = {}
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def flood() -> list[str]:
        acked: list[str] = []
        async with aiohttp.ClientSession(headers=auth, connector=aiohttp.TCPConnector(limit=0)) as s:
            async def client(k: int) -> None:
                for i in range(25):
                    jid = f"f{k}-{i}"
                    spec = {"id": jid, "kind": "call", "target": "jobgrid.examples:sleep", "args": [0.02, jid]}
                    hist.invoke(f"c{k}", "submit", jid)
                    async with s.post(n.url + "/jobs", json={"jobs": [spec]}) as r:
                        await r.read()
                        seen[r.status] = seen.get(r.status, 0) + 1
                        if r.status in (200, 202):
                            hist.ok(f"c{k}", "submit", jid)
                            acked.append(jid)
                        else:
                            assert r.status in (429, 503), r.status
                            assert int(r.headers["Retry-After"]) >= 1
                            hist.fail(f"c{k}", "submit", jid)
            await asyncio.wait_for(asyncio.gather(*(client(k) for k in range(12))), 120)
        return acked

    acked = asyncio.run(flood())
    assert seen.get(429) and seen.get(503), seen
    assert acked and c.healthy(n)
    with jobgrid.Client(n.url, token=TOKEN) as client:
        for jid in acked:
            res = client.wait_result(jid, timeout=120)
            hist.ok("reader", "read", jid, value=json.loads(json.dumps(jobgrid.client.decode_value(res))))
    verdict = check(hist.ops)
    assert verdict.valid and not verdict.lost and set(verdict.acknowledged) == set(acked), verdict.to_dict()


def test_a_slow_body_is_cut_off_and_does_not_block_others(cluster_factory) -> None:
    import socket
    c = cluster_factory(runners=0, replicas=1)
    n = c.up(1)[0]
    with socket.create_connection((n.host, n.port), timeout=10) as s:
        s.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        assert c.healthy(n)  # the stalled client does not block the node
        assert call(n.host, n.port, "GET", "/state")[0] == 200


# ---- 6. storage failures -------------------------------------------------------------------------------------

def _serve(data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*JOBGRID, "server", str(free_port()), "--data-dir", str(data_dir), "--runners", "0"],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "COLUMNS": "500"})


def _populated(cluster_factory, n_jobs: int = 3) -> tuple[LocalCluster, Path]:
    c = cluster_factory(runners=0, replicas=1)
    n = c.up(1)[0]
    jobs = [{"id": f"s-{i}", "kind": "call", "target": "jobgrid.examples:noop"} for i in range(n_jobs)]
    assert call(n.host, n.port, "POST", "/jobs", {}, json.dumps({"jobs": jobs}).encode())[0] == 202
    c.stop()
    return c, n.data_dir / "jobgrid.sqlite3"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_is_refused_with_a_clear_message(cluster_factory, damage: str) -> None:
    _, db = _populated(cluster_factory)
    data = db.read_bytes()
    for extra in db.parent.glob("jobgrid.sqlite3-*"):
        extra.unlink()
    if damage == "garbage":
        db.write_bytes(os.urandom(len(data)))
    else:
        db.write_bytes(data[: max(100, len(data) // 3)])
    r = _serve(db.parent)
    assert r.returncode != 0, r.stdout + r.stderr
    msg = r.stdout + r.stderr
    assert str(db) in msg and ("corrupt" in msg or "damaged" in msg or "move it away" in msg), msg
    assert "Traceback" not in msg, msg


def test_a_data_dir_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data folder should be")
    r = _serve(blocker / "node")
    msg = r.stdout + r.stderr
    assert r.returncode != 0 and str(blocker / "node") in msg and "Traceback" not in msg, msg


@needs_root
def test_an_immutable_data_dir_is_refused(cluster_factory) -> None:
    _, db = _populated(cluster_factory)
    if subprocess.run(["chattr", "+i", str(db.parent)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")
    try:
        r = _serve(db.parent)
    finally:
        subprocess.run(["chattr", "-i", str(db.parent)], check=True)
    msg = r.stdout + r.stderr
    assert r.returncode != 0 and str(db.parent) in msg and "Traceback" not in msg, msg


@needs_root
def test_a_full_disk_answers_507_and_keeps_what_was_stored(cluster_factory, tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        c = cluster_factory(runners=0, replicas=1)
        n = c.add_node()
        n.data_dir = mnt / "n1"
        c.start(n)
        c.wait_healthy(n, 60)
        acked, statuses = [], []
        blob = __import__("base64").b64encode(os.urandom(60_000)).decode()
        for i in range(40):
            jid = f"big-{i}"
            spec = {"id": jid, "kind": "pickle", "payload": blob}
            st, _, raw = call(n.host, n.port, "POST", "/jobs", {}, json.dumps({"jobs": [spec]}).encode())
            statuses.append(st)
            if st == 202:
                acked.append(jid)
            else:
                assert st == 507 and "cannot write" in json.loads(raw)["error"], (st, raw)
                break
        assert statuses[-1] == 507 and acked, statuses
        assert c.healthy(n)
        for jid in acked:
            st, _, raw = call(n.host, n.port, "GET", f"/jobs/{jid}")
            assert st == 200 and json.loads(raw)["state"] == "queued", (jid, st, raw)
        c.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_client_that_stops_sending_its_body_gets_408_and_the_node_serves_on(cluster_factory):
    import socket
    import time
    cl = cluster_factory(replicas=1, runners=0, token=TOKEN, extra_args=["--body-timeout", "1"])
    node = cl.up(1, timeout=60)[0]
    with socket.create_connection((node.host, node.port), timeout=10) as s:
        s.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"jobs\": [")
        t0 = time.monotonic()
        answer = s.recv(4096)  # ...and nothing more is sent
        waited = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"not received within 1 s" in answer
    assert 0.8 < waited < 5, waited
    assert cl.get(node, "/state")["member"]
