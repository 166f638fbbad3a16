"""`jobgrid client PORT`, the seed's interactive client, driven through its stdin against a real node:
`help` lists the client's own commands (it is not sent to the grid as Python), a failed expression's
traceback is shown once, and the commands it lists work. Also `jobgrid submit --wait` of a failing script
shows its traceback once."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from jobgrid.errors import ConfigError
from jobgrid.interactive import Line, parse

TRACEBACK = "Traceback (most recent call last)"


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _env(cl) -> dict[str, str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("JOBGRID_TOKEN", None)
    if cl.token:
        env["JOBGRID_TOKEN"] = cl.token
    return env


def client_session(cl, node, lines: list[str]) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "jobgrid.cli", "client", str(node.port), "--host", node.host],
                          input="".join(f"{line}\n" for line in lines), capture_output=True, text=True,
                          timeout=180, env=_env(cl))
    return proc.returncode, _plain(proc.stdout), _plain(proc.stderr)


def test_help_lists_the_clients_commands_and_a_failed_expression_shows_one_traceback(cluster_factory, tmp_path):
    cl = cluster_factory(replicas=1, runners=1)
    (n,) = cl.up(1, timeout=60)
    rc, out, err = client_session(cl, n, ["help", "1/0", "quit"])
    assert rc == 0, (out, err)
    # help: the client's own commands, answered locally (nothing submitted, not Python's help())
    head, _, rest = out.partition("1/0" if "1/0" in out else "submitted")
    assert "Type help()" not in out, out
    assert out.count("submitted ") == 1, out  # only the expression went to the grid
    for command in ("help", "quit", "servers", "result", "cancel", ".py"):
        assert command in head, f"help does not mention {command!r}:\n{out}"
    # the failed expression: its result, its error, and its traceback once
    assert ": failed" in out and "ZeroDivisionError" in out, out
    assert (out + err).count(TRACEBACK) == 1, out + err


def test_the_interactive_clients_commands_run_scripts_expressions_and_lookups(cluster_factory, tmp_path):
    cl = cluster_factory(replicas=1, runners=1)
    (n,) = cl.up(1, timeout=60)
    script = tmp_path / "hello.py"
    script.write_text("import sys; print('hello', *sys.argv[1:])")
    rc, out, err = client_session(cl, n, [f"{script} big world", "6 * 7", "servers", "print(", "result nope-1"])
    assert rc == 0, (out, err)  # EOF ends the session like quit
    ids = re.findall(r"submitted ([0-9a-f]{32})", out)
    assert len(ids) == 2, out
    assert "hello big world" in out and "42" in out, out
    assert re.search(r"ring epoch \d+", out) and f"{n.host}:{n.port}" in out, out  # the server list
    assert "not a script path or a Python expression" in err, err  # a syntax error is a clear line, not a job
    assert "no server knows job nope-1" in err or "nope-1" in err, err

    rc, out, err = client_session(cl, n, [f"result {ids[0]}", f"cancel {ids[1]}"])
    assert rc == 0 and "hello big world" in out, (out, err)
    assert f"{ids[1]}: not cancelled" in out, out  # it finished already


def test_submit_wait_of_a_failing_script_shows_its_traceback_once(cluster_factory, tmp_path):
    cl = cluster_factory(replicas=1, runners=1)
    (n,) = cl.up(1, timeout=60)
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    raise ValueError('planned')\n\nf()\n")
    proc = subprocess.run([sys.executable, "-m", "jobgrid.cli", "submit", str(bad), "--wait", "--address", n.url],
                          capture_output=True, text=True, timeout=180, env=_env(cl))
    out = _plain(proc.stdout) + _plain(proc.stderr)
    assert proc.returncode == 1 and "ValueError: planned" in out, out
    assert out.count(TRACEBACK) == 1, out


@pytest.mark.parametrize(("text", "line"), [
    ("", None), ("   ", None),
    ("help", Line("help")), ("?", Line("help")), (" quit ", Line("quit")), ("exit()", Line("quit")),
    ("servers", Line("servers")), ("result abc", Line("result", ("abc",))), ("cancel a  b", Line("cancel", ("a", "b"))),
    ("job.py x 'y z'", Line("script", ("job.py", "x", "y z"))),
    ("6 * 7", Line("expression", ("6 * 7",))), ("help(len)", Line("expression", ("help(len)",))),
    ('"it\'s"', Line("expression", ('"it\'s"',))),  # unbalanced for shlex, fine for Python
])
def test_a_line_is_a_command_a_script_or_an_expression(text, line):
    assert parse(text) == line


@pytest.mark.parametrize(("text", "says"), [
    ("print(", "not a script path or a Python expression"), ("x = 1", "not a script path or a Python expression"),
    ("result", "usage: result JOB_ID"), ("result a b", "usage: result JOB_ID"), ("cancel", "usage: cancel"),
    ("help me", "help takes no arguments"),
])
def test_a_line_that_is_none_of_them_gets_one_clear_error(text, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse(text)
