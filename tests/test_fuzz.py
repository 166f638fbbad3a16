"""Malformed, truncated, wrong-typed and oversized bodies at every endpoint of one live node, peer messages
sent with the peer credential, and call frames on /stream (as a peer and as a client): never a 500, the node
stays healthy, and jobs it acknowledged before the barrage are still queued afterwards."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.local import LocalCluster

TOKEN = "fuzz-token-" + uuid.uuid4().hex
KEPT = [f"keep-{uuid.uuid4().hex}" for _ in range(5)]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

NODE_ID = "n1abc"
RING = {"epoch": 1, "members": [{"id": NODE_ID, "location": 5, "ip": "127.0.0.1", "port": 1}]}
SPEC = {"id": "fz-1", "kind": "call", "target": "jobgrid.examples:noop", "args": [1]}
RECORD = {"spec": SPEC, "owner": NODE_ID}
RESULT = {"job_id": "fz-1", "state": "succeeded"}

# One plausible body per POST endpoint: the fuzzer mutates these so it reaches past the first check.
VALID: dict[str, dict] = {
    "/jobs": {"jobs": [SPEC]},
    "/jobs/cancel": {"ids": ["fz-1"]},
    "/results/wait": {"ids": ["fz-1"], "timeout": 0},
    "/peer/heartbeat": {"sender": NODE_ID, "epoch": 0, "active": 0},
    "/peer/ring": {"ring": RING},
    "/peer/lock": {"holder": NODE_ID, "ttl": 1},
    "/peer/unlock": {"holder": NODE_ID},
    "/peer/replicate": {"sender": NODE_ID, "epoch": 0, "jobs": [RECORD]},
    "/peer/steal": {"runner": NODE_ID, "epoch": 0, "max_jobs": 1},
    "/peer/report": {"runner": NODE_ID, "results": [RESULT]},
    "/peer/renew": {"runner": NODE_ID, "ids": ["fz-1"]},
    "/peer/handoff": {"sender": NODE_ID, "epoch": 0, "dead": NODE_ID, "jobs": [RECORD], "results": [RESULT]},
    "/peer/lookup": {"ids": ["fz-1"]},
}
GETS = ["/jobs/{id}", "/jobs/{id}/result", "/jobs", "/servers", "/state", "/metrics", "/results", "/peer/ring",
        "/", "/healthz"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(Path(tmp_path_factory.mktemp("fuzz")), runners=0, replicas=1, token=TOKEN, exit_with_parent=True)
    try:
        c.up(1)
        n = c.nodes[0]
        jobs = [{"id": i, "kind": "call", "target": "jobgrid.examples:noop"} for i in KEPT]
        status, _, raw = request(c, "POST", "/jobs", json.dumps({"jobs": jobs}).encode(), "application/json")
        assert status == 202 and sorted(json.loads(raw)["accepted"]) == sorted(KEPT), raw
        assert n.node_id
        yield c
    finally:
        c.stop()


_conns: dict[str, http.client.HTTPConnection] = {}


def request(c: LocalCluster, method: str, path: str, body: bytes | None = None, ctype: str | None = None,
            timeout: float = 30.0) -> tuple[int, dict, bytes]:
    n = c.nodes[0]
    # peer messages with the peer credential (a node's), so the fuzzer reaches past the role check
    headers = {"Authorization": f"Bearer {c.peer_secret}", "X-Jobgrid-Node": NODE_ID} if path.startswith("/peer/") \
        else {"Authorization": f"Bearer {TOKEN}"}
    if ctype is not None:
        headers["Content-Type"] = ctype
    for attempt in range(2):  # a kept-alive connection the server closed gets one fresh retry
        conn = _conns.get(n.url)
        if conn is None:
            conn = _conns[n.url] = http.client.HTTPConnection(n.host, n.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            return r.status, dict(r.getheaders()), data
        except (ConnectionError, http.client.HTTPException):
            conn.close()
            _conns.pop(n.url, None)
            if attempt:
                raise
    raise AssertionError("unreachable")


def check_answer(status: int, headers: dict, raw: bytes, what: str) -> None:
    assert status < 500, f"{what} -> {status}: {raw[:500]!r}"
    if status == 409 and headers.get("Content-Type") == "application/msgpack":
        assert "members" in msgspec.msgpack.decode(raw), what  # a peer's stale epoch: the current ring
    elif status >= 400:
        assert "error" in json.loads(raw), f"{what} -> {status} without a JSON error: {raw[:200]!r}"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=10), kids, max_size=5),
    max_leaves=20)


@st.composite
def bodies(draw: st.DrawFn, valid: dict) -> tuple[bytes, str]:
    """A body and a Content-Type: garbage, random values, a mutated valid body, or a truncated one."""
    fmt = draw(st.sampled_from(["application/json", "application/msgpack"]))
    enc = (lambda v: json.dumps(v).encode()) if fmt == "application/json" else msgspec.msgpack.encode
    kind = draw(st.sampled_from(["bytes", "value", "mutate", "truncate", "ctype"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), fmt
    if kind == "value":
        return enc(draw(json_values)), fmt
    body = json.loads(json.dumps(valid))
    if kind in ("mutate", "truncate"):
        target = body
        while True:  # descend into a random nested dict, then break one of its fields
            keys = sorted(target)
            key = draw(st.sampled_from(keys + ["<extra>"]))
            if key != "<extra>" and isinstance(target[key], dict) and draw(st.booleans()):
                target = target[key]
                continue
            if key != "<extra>" and isinstance(target[key], list) and target[key] \
                    and isinstance(target[key][0], dict) and draw(st.booleans()):
                target = target[key][0]
                continue
            break
        action = draw(st.sampled_from(["replace", "delete", "extra"]))
        if key == "<extra>" or action == "extra":
            target[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
        elif action == "delete":
            del target[key]
        else:
            target[key] = draw(json_values)
    raw = enc(body)
    if kind == "truncate":
        raw = raw[: draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))]
    if kind == "ctype":
        return raw, draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "",
                                          "application/json; charset=latin-1", "multipart/form-data"]))
    return raw, fmt


@pytest.mark.parametrize("path", sorted(VALID))
def test_post_endpoint_never_answers_500(node: LocalCluster, path: str) -> None:
    @FUZZ
    @given(bodies(VALID[path]))
    def run(b: tuple[bytes, str]) -> None:
        raw, ctype = b
        status, headers, data = request(node, "POST", path, raw, ctype or None)
        check_answer(status, headers, data, f"POST {path} {ctype} {raw[:200]!r}")

    run()
    assert node.healthy(node.nodes[0])


def test_get_endpoints_with_odd_ids_and_queries_never_answer_500(node: LocalCluster) -> None:
    part = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200)

    @FUZZ
    @given(st.sampled_from(GETS), part, st.dictionaries(st.sampled_from(["state", "limit", "token", "x"]), part,
                                                        max_size=3))
    def run(template: str, ident: str, query: dict) -> None:
        from urllib.parse import quote, urlencode
        path = template.replace("{id}", quote(ident, safe="") or "x")
        if query:
            path += "?" + urlencode(query)
        status, headers, data = request(node, "GET", path)
        if status >= 300 and status < 400:
            return  # the dashboard's ?token= redirect
        check_answer(status, headers, data, f"GET {path}")

    run()


def test_oversized_body_is_refused_with_413(node: LocalCluster) -> None:
    big = b"[" + b"1," * (33 * 1024 * 1024) + b"1]"  # > 64 MiB, the node's max_body
    status, _, data = request(node, "POST", "/jobs", big, "application/json", timeout=60)
    assert status == 413, data[:300]


def test_peer_messages_with_a_client_token_are_refused_before_decoding(node: LocalCluster) -> None:
    n = node.nodes[0]
    for path, valid in VALID.items():
        if not path.startswith("/peer/"):
            continue
        conn = http.client.HTTPConnection(n.host, n.port, timeout=30)
        conn.request("POST", path, body=json.dumps(valid).encode(),
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 403 and "peer" in json.loads(r.read())["error"], (path, r.status)
        conn.close()


@pytest.mark.parametrize("role", ["peer", "client"])
def test_stream_frames_never_answer_500(node: LocalCluster, role: str) -> None:
    """Call frames on /stream (as a node with the peer secret, and as a client): every well-formed frame is
    answered below 500 (403 for a client's peer frames); a malformed one closes the stream with 1003."""
    import asyncio

    import aiohttp
    n = node.nodes[0]
    headers = {"Authorization": f"Bearer {node.peer_secret}", "X-Jobgrid-Node": NODE_ID} if role == "peer" \
        else {"Authorization": f"Bearer {TOKEN}"}
    enc = msgspec.msgpack.encode
    paths = st.sampled_from(sorted(p for p in VALID if p.startswith("/peer/") or p in ("/jobs", "/results/wait")))
    frames = st.one_of(
        paths.flatmap(lambda p: bodies(VALID[p]).map(lambda b: ("call", p, b[0]))),
        st.tuples(paths, bodies(VALID["/jobs"])).map(lambda t: ("call", t[0], t[1][0])),
        st.binary(max_size=200).map(lambda b: ("raw", "", b)),
        st.tuples(st.text(max_size=30), st.binary(max_size=50)).map(lambda t: ("call", t[0], t[1])))
    seen: dict[int, int] = {}

    async def send(frame: tuple[str, str, bytes]) -> None:
        kind, path, body = frame
        async with aiohttp.ClientSession(headers=headers) as s:
            async with s.ws_connect(n.url + "/stream") as ws:
                await ws.send_bytes(body if kind == "raw" else enc((1, path, None, body)))
                msg = await ws.receive(timeout=30)
                if msg.type is aiohttp.WSMsgType.BINARY:
                    mid, status, answer = msgspec.msgpack.decode(msg.data)
                    seen[status] = seen.get(status, 0) + 1
                    assert status < 500, (path, status, answer[:300])
                    if role == "client" and path.startswith("/peer/"):
                        assert status == 403, (path, status)
                else:  # not a call frame: closed as unsupported data, never a crash
                    assert ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA, (frame, msg)

    @FUZZ
    @given(frames)
    def run(frame: tuple[str, str, bytes]) -> None:
        asyncio.run(send(frame))

    run()
    assert seen and node.healthy(n), seen


def test_acknowledged_jobs_are_intact_after_the_barrage(node: LocalCluster) -> None:
    assert node.healthy(node.nodes[0])
    for jid in KEPT:
        status, _, data = request(node, "GET", f"/jobs/{jid}")
        assert status == 200, data
        assert json.loads(data)["state"] == "queued", data
    st_ = node.get(node.nodes[0], "/state")
    assert st_["member"] is True and len(st_["ring"]["members"]) == 1, st_
