"""The peer stream (one WebSocket per peer for POST /peer/* messages), against real node processes:
it is what nodes use by default, it answers exactly like the HTTP routes (auth, 404, 422 naming the
field, 409 carrying the ring), and a peer killed while a call waits fails that call at once."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid

import aiohttp
import msgspec
import pytest

from jobgrid import Client, examples
from jobgrid.node.peers import PeerError, Peers
from jobgrid.node.stream import STREAM_PATH
from jobgrid.protocol import LookupRequest, LookupResponse, ReplicateRequest, RingState

TOKEN = "stream-token-" + uuid.uuid4().hex
_enc = msgspec.msgpack.Encoder()


def peer_messages(cl, node) -> dict[str, float]:
    """The node's jobgrid_peer_messages_total counters by transport, read from GET /metrics."""
    req = urllib.request.Request(node.url + "/metrics")
    if cl.token:
        req.add_header("Authorization", f"Bearer {cl.token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        text = r.read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^jobgrid_peer_messages_total\{transport="(\w+)"\} (\S+)$', text, re.M)}


@pytest.mark.parametrize("transport", ["stream", "http"])
def test_nodes_send_peer_messages_over_the_chosen_transport_only(cluster_factory, transport):
    cl = cluster_factory(replicas=3, runners=1, extra_args=["--peer-transport", transport])
    cl.up(3, timeout=60)
    with Client([n.url for n in cl.nodes], timeout=30) as c:
        assert c.map(examples.square, range(60)) == [x * x for x in range(60)]
    other = "http" if transport == "stream" else "stream"
    for n in cl.nodes:
        counts = peer_messages(cl, n)
        # joins, heartbeats, replication and results went this way (at least the 3 join locks/announces)...
        assert counts.get(transport, 0) >= 3, (n.name, counts)
        # ...and not one POST /peer/* message the other way
        assert counts.get(other, 0) == 0, (n.name, counts)


def _call(ws_answer: bytes) -> tuple[int, int, bytes]:
    return msgspec.msgpack.decode(ws_answer, type=tuple[int, int, bytes])


def test_the_stream_checks_the_token_and_answers_like_the_http_routes(cluster_factory):
    cl = cluster_factory(replicas=1, runners=0, token=TOKEN)
    cl.up(1, timeout=60)
    url = cl.nodes[0].url + STREAM_PATH

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await s.ws_connect(url)
            assert e.value.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await s.ws_connect(url, headers={"Authorization": "Bearer wrong-token-0123456789"})
            assert e.value.status == 401
            # not a WebSocket upgrade: a plain 400, as JSON
            async with s.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 400 and "error" in await r.json()

            # a client's stream answers its own frames only; peers name their node and hold the peer secret
            async with s.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"}) as cws:
                await cws.send_bytes(_enc.encode((6, "/peer/lookup", None, _enc.encode(LookupRequest(ids=["a"])))))
                mid, status, body = _call(await cws.receive_bytes(timeout=5))
                assert (mid, status) == (6, 403) and "peer" in json.loads(body)["error"]
            ws = await s.ws_connect(url, headers={"Authorization": f"Bearer {cl.peer_secret}",
                                                  "X-Jobgrid-Node": "stranger"})
            # calls are answered by id
            await ws.send_bytes(_enc.encode((7, "/peer/lookup", "cause-1", _enc.encode(LookupRequest(ids=["a"])))))
            mid, status, body = _call(await ws.receive_bytes(timeout=5))
            assert (mid, status) == (7, 200)
            assert msgspec.msgpack.decode(body, type=LookupResponse).jobs == []
            # an unknown message: 404 naming it
            await ws.send_bytes(_enc.encode((8, "/peer/nope", None, b"\x80")))
            mid, status, body = _call(await ws.receive_bytes(timeout=5))
            assert (mid, status) == (8, 404) and "/peer/nope" in json.loads(body)["error"]
            # an invalid message: 422 naming the field
            await ws.send_bytes(_enc.encode((9, "/peer/replicate", None, _enc.encode({"sender": 5, "epoch": 0}))))
            mid, status, body = _call(await ws.receive_bytes(timeout=5))
            assert (mid, status) == (9, 422) and "sender" in json.loads(body)["error"]
            # garbage inside a well-formed frame: 400
            await ws.send_bytes(_enc.encode((10, "/peer/replicate", None, b"\xc1\xc1")))
            mid, status, _ = _call(await ws.receive_bytes(timeout=5))
            assert (mid, status) == (10, 400)
            # fencing: a stranger's replication is refused with 409 and our ring
            await ws.send_bytes(_enc.encode((11, "/peer/replicate", None,
                                             _enc.encode(ReplicateRequest(sender="stranger", epoch=0)))))
            mid, status, body = _call(await ws.receive_bytes(timeout=5))
            assert (mid, status) == (11, 409)
            ring = msgspec.msgpack.decode(body, type=RingState)
            assert [m.id for m in ring.members] == [cl.get(cl.nodes[0], "/state")["id"]]
            # a frame that is not a call closes the stream with 1003
            await ws.send_bytes(b"\x93\x01\x02")
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA
            await ws.close()

    asyncio.run(go())


def test_a_peer_killed_while_a_call_waits_fails_the_call_at_once_and_a_restart_reconnects(cluster_factory):
    cl = cluster_factory(replicas=1, runners=0, token=TOKEN)
    cl.up(1, timeout=60)
    node = cl.nodes[0]

    async def go() -> None:
        peers = Peers(token=cl.peer_secret)
        try:
            r = await peers.call(node.host, node.port, "/peer/lookup", LookupRequest(ids=["x"]), LookupResponse)
            assert r.jobs == [] and len(peers._links) == 1
            cl.pause(node)  # SIGSTOP: the call below cannot be answered...
            call = asyncio.ensure_future(peers.call(node.host, node.port, "/peer/lookup", LookupRequest(ids=["y"]),
                                                    LookupResponse, timeout=60))
            await asyncio.sleep(0.3)
            assert not call.done()
            t0 = time.monotonic()
            await asyncio.to_thread(cl.kill, node)  # ...SIGKILL: its socket closes
            with pytest.raises(PeerError):
                await call
            assert time.monotonic() - t0 < 5, "the call waited for its timeout instead of failing on the close"
            await asyncio.to_thread(cl.start, node)
            await asyncio.to_thread(cl.wait_healthy, node, 60)
            r = await peers.call(node.host, node.port, "/peer/lookup", LookupRequest(ids=["z"]), LookupResponse)
            assert r.jobs == []
        finally:
            await peers.close()

    asyncio.run(go())
