"""The fast paths keep their promises: a submit that returns before its ack, flat cost with a deep queue."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request

import msgspec
import pytest

from harness.local import free_port
from jobgrid.client import Client, pickle_spec
from jobgrid.errors import GridUnavailable
from jobgrid.examples import noop, sleep


def test_submit_returns_at_once_and_a_failed_ack_reaches_the_future() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=1.0) as c:
        t0 = time.monotonic()
        fut = c.submit(noop, 1)
        assert time.monotonic() - t0 < 0.5  # no round trip before returning
        with pytest.raises(GridUnavailable):
            fut.result(30)


def test_a_job_just_submitted_is_known_to_status_cancel_and_result(cluster_factory) -> None:
    cl = cluster_factory(replicas=1, runners=1)
    cl.up(1)
    with Client(cl.nodes[0].url) as c:
        slow = c.submit(sleep, 30.0, "never")
        queued = c.submit(noop, "queued")
        assert c.status(queued.job_id)["id"] == queued.job_id
        assert c.cancel(slow.job_id) == [slow.job_id]
        assert c.result(queued.job_id, timeout=60) == "queued"
        futs = [c.submit(noop, i) for i in range(300)]
        assert [f.result(60) for f in futs] == list(range(300))


def _post_ms(url: str, body: dict) -> float:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000


def test_submit_cost_and_memory_stay_flat_with_a_deep_queue(cluster_factory) -> None:
    cl = cluster_factory(replicas=1, runners=0)
    cl.up(1)
    node = cl.nodes[0]

    def submit_ms() -> float:
        return statistics.median(
            _post_ms(node.url + "/jobs", {"jobs": [msgspec.to_builtins(pickle_spec(noop, (i,), {}))], "retry": False})
            for i in range(30))

    empty = submit_ms()
    with Client(node.url) as c:
        specs = [pickle_spec(noop, (i,), {}) for i in range(30_000)]
        for i in range(0, len(specs), 5000):
            c.submit_many(specs[i:i + 5000])
    assert cl.get(node, "/state")["counts"]["queued"] >= 30_000  # type: ignore[index]
    deep = submit_ms()
    assert deep < 2 * empty + 0.5, (empty, deep)
    rss_kb = next(int(line.split()[1]) for line in open(f"/proc/{node.pid}/status") if line.startswith("VmRSS:"))
    assert rss_kb < 200 * 1024
