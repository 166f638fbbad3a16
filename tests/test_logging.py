"""Causal ids in the logs: every line about a job names it and the cause that led to it, across nodes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import urllib.request
from pathlib import Path

import msgspec
import structlog

from jobgrid import logs
from jobgrid.client import Client, pickle_spec
from jobgrid.examples import sleep
from jobgrid.protocol import SubmitRequest

from conftest import wait_for

CAUSE = "test-cause-0001"


def _lines(path: Path) -> list[dict]:
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                out.append(json.loads(raw))
            except ValueError:
                pass  # a line still being written
    return out


def _about(lines: list[dict], jid: str) -> list[dict]:
    return [d for d in lines if d.get("job_id") == jid or jid in (d.get("job_ids") or ())]


def test_every_job_line_has_a_cause_and_causes_follow_the_job_across_nodes(cluster_factory):
    cluster = cluster_factory(replicas=2, runners=1, extra_args=["--log-level", "debug"])
    n1, n2 = cluster.up(2)
    specs = [pickle_spec(sleep, (0.4, i), {}) for i in range(12)]
    req = urllib.request.Request(n1.url + "/jobs", data=msgspec.json.encode(SubmitRequest(jobs=specs)),
                                 headers={"Content-Type": "application/json", logs.CAUSE_HEADER: CAUSE})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 202
    ids = [s.id for s in specs]
    with Client([n1.url, n2.url]) as c:
        results = {i: c.wait_result(i, timeout=90) for i in ids}
        late = c.submit(sleep, 0.0, "via client")  # the client's own per-batch cause
        assert late.result(60) == "via client"
    assert all(r.state == "succeeded" for r in results.values())
    assert {r.kind for r in results.values()} == {"pickle"} and all(r.name for r in results.values())
    by_id = {n1.node_id: n1, n2.node_id: n2}
    assert set(r.node for r in results.values()) <= set(by_id)
    stolen = [i for i in ids if results[i].node != n1.node_id]
    assert stolen, "n2 never stole a job from n1: the cross-node path was not exercised"

    def recorded_all() -> bool:
        return all(any(d["event"] == "job_recorded" for d in _about(_lines(n1.log_path), i)) for i in ids)

    wait_for(recorded_all, 30, "the owner's log to show every job recorded")
    log1, log2 = _lines(n1.log_path), _lines(n2.log_path)
    logs_of = {n1.node_id: log1, n2.node_id: log2}

    # every line about a job (on either node) carries a cause
    about_jobs = [d for d in log1 + log2 if "job_id" in d or "job_ids" in d]
    assert len(about_jobs) > 4 * len(ids)
    missing = [d for d in about_jobs if not d.get("cause")]
    assert not missing, missing[:5]

    for jid in ids:
        mine = _about(log1, jid)
        # the client's cause reached the owner: its submission lines carry it
        assert any(d["event"] in ("job_submitted", "jobs_submitted") and d["cause"] == CAUSE for d in mine), mine
        runner = logs_of[results[jid].node]
        ran = _about(runner, jid)
        # the runner's report cause is the cause of the owner's record line
        reported = {d["cause"] for d in ran if d["event"] == "job_reported"}
        recorded = {d["cause"] for d in mine if d["event"] == "job_recorded"}
        assert reported and recorded and recorded <= reported, (jid, reported, recorded)
        started = {d["cause"] for d in ran if d["event"] == "job_started"}
        if jid in stolen:  # the thief's steal request: its cause shows on the owner and on the runner
            on_owner = {d["cause"] for d in mine if d["event"] == "job_stolen"}
            assert on_owner and on_owner & started, (jid, on_owner, started)
        else:
            leased = {d["cause"] for d in mine if d["event"] == "job_leased"}
            assert leased & started, (jid, leased, started)

    # the client tags each submission batch with its own cause
    late_lines = _about(_lines(n1.log_path) + _lines(n2.log_path), late.job_id)
    sub = [d for d in late_lines if d["event"] == "job_submitted"]
    assert sub and sub[0]["cause"].startswith("sub-"), late_lines


def test_console_renderer_without_json_and_json_lines_otherwise(capsys):
    try:
        logs.configure("info", json=False)
        assert isinstance(structlog.get_config()["processors"][-1], structlog.dev.ConsoleRenderer)
        logs.configure("info", json=True)
        assert isinstance(structlog.get_config()["processors"][-1], structlog.processors.JSONRenderer)
    finally:
        structlog.reset_defaults()


def test_a_terminal_gets_readable_lines_and_a_file_gets_json(tmp_path):
    code = ("import structlog; from jobgrid import logs; logs.configure('info');"
            "logs.bind_cause('c-1'); structlog.get_logger('t').info('hello', job_id='j1')")
    # on a terminal (a real pty): the console renderer, not JSON
    leader, follower = pty.openpty()
    p = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=follower, timeout=60)
    os.close(follower)
    out = b""
    try:
        while chunk := os.read(leader, 4096):
            out += chunk
    except OSError:
        pass  # the pty closes when the child is gone
    os.close(leader)
    assert p.returncode == 0
    text = out.decode(errors="replace")
    assert "hello" in text and "c-1" in text and not text.lstrip().startswith("{"), text
    # not a terminal: one JSON object per line, with the cause
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    line = json.loads(p.stderr.strip().splitlines()[-1])
    assert line["event"] == "hello" and line["cause"] == "c-1" and line["job_id"] == "j1"
