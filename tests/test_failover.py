"""What a client sees while the grid fails over (issue 11): no future fails because of the grid's own churn.

Real node processes on loopback, SIGKILL, and the blocking `Client` a user would write: the test waits on
the futures it got from `client.submit` (not polling the grid) and every one of them must resolve with
the job's value.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from jobgrid import Client, examples
from jobgrid.client import AsyncClient, build_spec, decode_value
from jobgrid.errors import JobNotFound, JobTimeout
from jobgrid.history import HistoryRecorder, check

from conftest import by_value, needs_root, wait_for

by_value(__name__)

CONTACT_TIMING = dict(replicas=3, runners=1, heartbeat_interval=0.5, failure_timeout=2.0, lease_ttl=3.0)


def test_kill_the_clients_first_address_and_another_node_no_future_raises(cluster_factory):
    """The issue's scenario: 5 nodes (R=3, 1 runner each), a Client given all five addresses, 400 jobs,
    SIGKILL of two nodes (one of them the client's first address) one second later."""
    c = cluster_factory(**CONTACT_TIMING)
    nodes = c.up(5)
    hist = HistoryRecorder()
    raised: dict[str, BaseException] = {}
    values: dict[str, object] = {}
    with Client([n.url for n in nodes], timeout=60.0) as client:
        futs = []
        for i in range(400):
            hist.invoke("c1", "submit", f"job{i}")
            f = client.submit(examples.sleep, 0.05, i)
            futs.append((i, f))
        time.sleep(1.0)  # the fault's timing, as in the report: a second into the run
        c.kill(nodes[0])  # the client's first address, the owner of every job
        c.kill(nodes[2])  # n3: one of the two nodes holding the copies of n1's jobs
        for i, f in futs:
            try:
                values[f.job_id] = v = f.result(timeout=120)
            except BaseException as e:  # noqa: BLE001 - every kind of failure counts
                raised[f.job_id] = e
                hist.info("c1", "submit", f"job{i}", error=repr(e))
                continue
            hist.ok("c1", "submit", f"job{i}")
            hist.ok("c1", "read", f"job{i}", value=v, delivery=True)
            assert v == i, (f.job_id, v, i)
    kinds = sorted({f"{type(e).__name__}: {str(e)[:80]}" for e in raised.values()})
    assert not raised, f"{len(raised)} of 400 futures raised: {kinds[:5]}"
    assert len(values) == 400
    res = check(hist.ops)
    assert res.valid and res.ok_count == 400, res.to_dict(limit=10)


def _post(url: str, body: dict, timeout: float = 10.0) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


def _get(url: str, timeout: float = 10.0) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), dict(e.headers)


def test_unknown_only_from_a_settled_grid(cluster_factory):
    """An id no node holds is "unknown" (404, JobNotFound) only once every member of the ring answered;
    while a member is down but not yet removed it is "not known yet" (503, undetermined)."""
    c = cluster_factory(replicas=3, runners=1, heartbeat_interval=0.5, failure_timeout=6.0, lease_ttl=3.0)
    nodes = c.up(4)
    live = nodes[0]
    ghost = "no-such-job-" + uuid.uuid4().hex[:8]
    status, body, _ = _post(live.url + "/results/wait", {"ids": [ghost], "timeout": 0})
    assert status == 200 and body["unknown"] == [ghost] and body["undetermined"] == []
    assert _get(f"{live.url}/jobs/{ghost}")[0] == 404
    c.kill(nodes[2])
    t0 = time.monotonic()
    status, body, _ = _post(live.url + "/results/wait", {"ids": [ghost], "timeout": 0})
    st, err, headers = _get(f"{live.url}/jobs/{ghost}")
    assert time.monotonic() - t0 < 5.0, "asked before the dead member was removed (failure timeout 6 s)"
    assert status == 200 and body["unknown"] == [] and body["undetermined"] == [ghost], body
    assert st == 503 and "cannot tell yet" in err["error"] and headers.get("Retry-After"), (st, err)
    with Client([n.url for n in nodes], timeout=30.0) as client:
        with pytest.raises(JobTimeout):  # "don't know yet" is waited through, up to the caller's timeout
            client.wait_result(ghost, timeout=1.0)
        c.wait_converged(30)  # the dead member is out of the ring: the grid is settled again
        with pytest.raises(JobNotFound):
            client.wait_result(ghost, timeout=30.0)
        with pytest.raises(JobNotFound):
            client.status(ghost)


def test_gather_of_200_wait_result_calls_shares_a_few_requests(cluster_factory):
    """200 concurrent wait_result calls, more than a node takes in flight on one stream: none may see
    "too many calls in flight"; the client asks about all the ids in one long poll at a time."""
    c = cluster_factory(replicas=2, runners=1)  # a stream takes 64 calls in flight (max_conns_per_client)
    nodes = c.up(2)

    async def go() -> tuple[list, int]:
        async with AsyncClient([n.url for n in nodes], timeout=30.0) as client:
            polls = most = 0
            send = client._send

            async def counting(base, method, path, *a, **kw):  # a spy on the real transport
                nonlocal polls, most
                if path != "/results/wait":
                    return await send(base, method, path, *a, **kw)
                polls += 1
                most = max(most, polls)
                try:
                    return await send(base, method, path, *a, **kw)
                finally:
                    polls -= 1
            client._send = counting  # type: ignore[method-assign]
            futs = await client.submit_many([build_spec("call", target="jobgrid.examples:sleep", args=[0.02, i])
                                             for i in range(200)])
            ids = [f.job_id for f in futs]
            records = await asyncio.gather(*(client.wait_result(i, timeout=60) for i in ids))
            values = [await f for f in futs]
            return [decode_value(r) for r in records] + values, most

    out, most = asyncio.run(go())
    assert out == list(range(200)) * 2
    assert most == 1, f"{most} result polls in flight at once for 200 waits"


FT = 2.0  # the failure timeout of the latency tests: the bound below is a protocol bound, 2 x FT


def _submit_latencies(client_url: str, fault, seconds_after: float) -> tuple[list[tuple[float, float]], float]:
    """Submit one small job at a time (4 submitters) to `client_url`, call `fault()` a second in, keep going for
    `seconds_after`; the (start, ack latency) of every submission and the fault's time."""
    out: list[tuple[float, float]] = []

    async def go() -> float:
        async with AsyncClient(client_url, timeout=30.0) as client:
            stop = time.monotonic() + 1.0 + seconds_after
            fault_at = 0.0

            async def submitter(k: int) -> None:
                i = 0
                while time.monotonic() < stop:
                    t = time.monotonic()
                    await client.submit_spec(build_spec("call", target="jobgrid.examples:noop", args=[i]))
                    out.append((t, time.monotonic() - t))
                    i += 1
                    await asyncio.sleep(0.02)

            async def injector() -> None:
                nonlocal fault_at
                await asyncio.sleep(1.0)
                fault_at = time.monotonic()
                await asyncio.to_thread(fault)
            await asyncio.gather(injector(), *(submitter(k) for k in range(4)))
            return fault_at
    at = asyncio.run(go())
    return out, at


def test_submissions_keep_flowing_when_a_successor_is_killed_or_paused(cluster_factory):
    """A fault on a node the client is not talking to (here: a node holding the copies of its node's jobs)
    delays no submission by more than twice the failure timeout."""
    c = cluster_factory(replicas=3, runners=1, heartbeat_interval=0.5, failure_timeout=FT, lease_ttl=3.0)
    nodes = c.up(5)
    contact = nodes[0]  # n1 at ring position 0: its successors are n5 and n3
    lat, at = _submit_latencies(contact.url, lambda: c.kill(nodes[4]), 3 * FT)
    worst = max(d for t, d in lat if t + d >= at)
    print(f"kill: {len(lat)} submissions, worst ack {worst:.2f} s after the fault")
    assert worst < 2 * FT, f"a submission waited {worst:.2f} s after a kill (bound {2 * FT} s)"
    c.wait_converged(30, nodes=nodes[:4])
    lat, at = _submit_latencies(contact.url, lambda: c.pause(nodes[2]), 3 * FT)
    worst = max(d for t, d in lat if t + d >= at)
    print(f"pause: {len(lat)} submissions, worst ack {worst:.2f} s after the fault")
    c.resume(nodes[2])
    assert worst < 2 * FT, f"a submission waited {worst:.2f} s after a pause (bound {2 * FT} s)"


def test_a_client_talking_to_a_paused_node_fails_over_within_its_timeout(cluster_factory):
    c = cluster_factory(replicas=3, runners=1, heartbeat_interval=0.5, failure_timeout=FT, lease_ttl=3.0)
    nodes = c.up(3)
    with Client([n.url for n in nodes], timeout=10.0) as client:
        assert client.submit(examples.add, 1, 1).result(timeout=30) == 2  # the stream to nodes[0] is open
        c.pause(nodes[0])
        try:
            t0 = time.monotonic()
            assert client.submit(examples.add, 2, 2).result(timeout=30) == 4
            took = time.monotonic() - t0
        finally:
            c.resume(nodes[0])
    print(f"failed over from a paused node in {took:.2f} s")
    assert took < 10.0


def counted(path: str, jid: str, seconds: float = 0.0) -> str:
    """A job with a side effect: one line per run in a file every node shares; then sleep."""
    with open(path, "a") as f:
        f.write(jid + "\n")
    time.sleep(seconds)
    return jid


def _runs(path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        out[line] = out.get(line, 0) + 1
    return out


def test_a_paused_runner_starts_none_of_its_prefetched_jobs_after_the_pause(cluster_factory, tmp_path):
    """A node frozen (SIGSTOP) while it runs one job and holds the next one prefetched is removed; when it
    wakes without quorum the running job's result goes back to the grid and the prefetched job is given
    back unstarted: it runs once, elsewhere. Only the job that was running may run twice."""
    c = cluster_factory(replicas=3, runners=1, heartbeat_interval=0.5, failure_timeout=FT, lease_ttl=3.0)
    nodes = c.up(3)
    b = nodes[1]
    runs = tmp_path / "runs.txt"
    hist = HistoryRecorder()
    for n in (nodes[0], nodes[2]):  # the other runners stay busy, so they steal nothing from b
        with Client(n.url, timeout=30.0) as other:
            other.submit_job(counted, (str(runs), f"block-{n.name}", 3 * FT + 4), id=f"b-{n.name}")
    wait_for(lambda: sum(j.startswith("block") for j in _runs(runs)) == 2, 30, "both blockers to start")
    with Client(b.url, timeout=30.0) as warm:  # jobs of ~20 ms: b's runner then prefetches one job ahead
        assert [f.result(timeout=60) for f in [warm.submit(examples.sleep, 0.02, i) for i in range(12)]] \
            == list(range(12))
    with Client([b.url] + [n.url for n in nodes if n is not b], timeout=30.0) as client:
        specs = [("long", 1.5)] + [(f"next{i}", 0.0) for i in range(4)]
        futs = []
        for jid, secs in specs:
            hist.invoke("c1", "submit", jid)
            futs.append(client.submit_job(counted, (str(runs), jid, secs), id=jid))
        wait_for(lambda: "long" in _runs(runs), 30, "the long job to start on b")
        leased = c.get(b, "/jobs?state=leased")
        held = sorted(j["id"] for j in leased)
        assert "next0" in held, f"b holds no prefetched job: {held}"
        c.pause(b)
        try:
            time.sleep(2 * FT + 1)  # the fault: frozen until removed; its jobs run elsewhere meanwhile
        finally:
            c.resume(b)
        for (jid, _), f in zip(specs, futs):
            v = f.result(timeout=120)
            hist.ok("c1", "submit", jid)
            hist.ok("c1", "read", jid, value=v, delivery=True)
        c.wait_converged(30)
    res = check(hist.ops)
    assert res.valid and res.ok_count == len(specs), res.to_dict()
    counts = _runs(runs)
    again = {j: n for j, n in counts.items() if n > 1 and j != "long"}
    assert not again, f"jobs that never started on the frozen node ran twice: {again} (b ran {held})"
    assert counts["long"] <= 2
    state = c.get(b, "/state")
    assert state["returned_unstarted"] >= 1, state["runners"]


def counted_done(path: str, jid: str, seconds: float) -> str:
    """Like `counted`, and a `<jid>:done` line when it finishes."""
    with open(path, "a") as f:
        f.write(jid + "\n")
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(jid + ":done\n")
    return jid


@needs_root
def test_a_result_finished_during_a_partition_is_delivered_after_it_and_recorded_once(cluster_factory, tmp_path):
    """A runner cut off from everyone while it runs a stolen job keeps the result it finishes meanwhile and
    reports it once the partition heals; the owner records it, and the job does not run again."""
    c = cluster_factory(replicas=3, runners=1, heartbeat_interval=0.5, failure_timeout=4.0, lease_ttl=10.0)
    a, b, cc = c.up(3)
    runs = tmp_path / "runs.txt"
    for n in (a, cc):  # the other runners stay busy: b steals the job
        with Client(n.url, timeout=30.0) as other:
            other.submit_job(counted, (str(runs), f"block-{n.name}", 20.0), id=f"block-{n.name}")
    wait_for(lambda: sum(j.startswith("block") for j in _runs(runs)) == 2, 30, "both blockers to start")
    with Client([a.url, cc.url, b.url], timeout=30.0) as client:
        fut = client.submit_job(counted_done, (str(runs), "cut", 2.0), id="cut")
        wait_for(lambda: "cut" in _runs(runs), 30, "the job to start (on b, the only idle runner)")
        c.partition([[b], [a, cc]])
        try:
            wait_for(lambda: "cut:done" in _runs(runs), 30, "the job to finish during the partition")
        finally:
            c.heal()
        assert fut.result(timeout=60) == "cut"
        res = client.wait_result("cut", timeout=30)
    assert res.node == b.node_id, f"recorded from {res.node}, not from the runner cut off ({b.node_id})"
    assert _runs(runs)["cut"] == 1, "the job ran again although its result was delivered after the partition"
