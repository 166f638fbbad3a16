"""Every Python and shell example of README.md and docs/*.md, run for real (issue 11: a documented call
must not break unnoticed again).

The fenced blocks are extracted from the files as they are. Python blocks run in a fresh interpreter
against a real local grid; shell blocks run in bash in a scratch directory against real nodes. What
is changed before running is only what cannot be used here, and it is listed per block below: the
documented addresses (10.0.0.x, port 8000..8002) become this test's nodes on 127.0.0.1 (the network
rule: nothing but loopback), and placeholders of job ids ("3f2a...") become ids of real jobs. A block
that cannot run here at all is in SKIP with the reason; a block of another language (a file tree, a
diagram) is not an example. A new block in a doc runs without any change to this file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.local import listen_port
from jobgrid import Client
from jobgrid.client import build_spec

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
TOKEN = "docs-example-token-" + os.urandom(8).hex()
PEER_SECRET = "docs-example-peers-" + os.urandom(8).hex()
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

SKIP = {
    "deploy.md#0": "writes the grid's secrets under /etc/jobgrid of a real machine and copies them to two others",
    "deploy.md#1": "three machines (10.0.0.1-3) listening on 0.0.0.0 with /var/lib/jobgrid and secrets under /etc; "
                   "the same start on one machine is the README tour, run here",
    "deploy.md#3": "a Docker Swarm across three machines and an image registry",
    "deploy.md#5": "a Kubernetes cluster (kubectl) and an image registry: none here",
    "README.md#0": "`make demo` / `make test`: make test runs this very suite (recursion); make demo is the "
                   "harness run that tests/test_harness_local.py runs",
    "features.md#4": "three alternative ways to start one node in the foreground, one of them a second machine "
                     "(JOBGRID_JOIN=10.0.0.4) with a placeholder token; each way is tested in tests/test_features.py",
}
# blocks that continue the one before them in the same shell session (the README's tour)
TOUR = ["README.md#1", "README.md#2", "README.md#3"]


def blocks() -> list[tuple[str, str, str]]:
    out = []
    for path in DOCS:
        for i, m in enumerate(FENCE.finditer(path.read_text())):
            out.append((f"{path.name}#{i}", m.group(1), m.group(2)))
    return out


RUNNABLE = [(k, lang, body) for k, lang, body in blocks() if lang in ("python", "sh", "bash", "toml")]


def _env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBGRID_")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", HOME=str(scratch), XDG_DATA_HOME=str(scratch / "data"),
               JOBGRID_TOKEN=TOKEN, JOBGRID_PEER_SECRET=PEER_SECRET,  # the docs' grids have credentials
               PYTHONUNBUFFERED="1")
    return env


def _healthy(port: int) -> bool:  # /healthz needs no token
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_healthy(ports: list[int], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not all(_healthy(p) for p in ports):
        assert time.monotonic() < end, f"nodes on ports {ports} not healthy after {timeout} s"
        time.sleep(0.1)


def _ports(text: str, base: int) -> str:
    """Documented addresses -> this test's nodes (8000.. -> base.., 10.0.0.4/5 -> 127.0.0.1)."""
    text = text.replace("10.0.0.4:8000", "127.0.0.1:8000").replace("10.0.0.5:8000", "127.0.0.1:8001")
    text = re.sub(r"\b800([0-2])\b", lambda m: str(base + int(m.group(1))), text)
    assert "10.0.0." not in text, "an address outside this machine is left in the example"
    return text


def _background_waits(script: str) -> str:
    """After a line that starts a node in the background, wait until it answers (as a person would
    before typing the next command)."""
    out = []
    for line in script.splitlines():
        out.append(line)
        m = re.match(r"\s*jobgrid server (\d+)\b.*&", line)
        if m:
            out.append(f"wait_healthy {m.group(1)}")
    return "\n".join(out)


PRELUDE = """
set -o pipefail
wait_healthy() { for i in $(seq 600); do curl -sf http://127.0.0.1:$1/healthz >/dev/null && return 0; sleep 0.1; done; echo "node $1 never healthy" >&2; return 1; }
"""


def _run_bash(script: str, cwd: Path, env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    """Run the script (bash -e); output to files, as nodes it starts in the background keep theirs open."""
    with open(cwd / "block.out", "w") as out, open(cwd / "block.err", "w") as err:
        proc = subprocess.Popen(["bash", "-e", "-c", PRELUDE + script], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)
    try:
        proc.wait(timeout)
    finally:  # every node the block started (in the background) goes with it, its workers too
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(2 if sig == signal.SIGTERM else 0)
        proc.wait(10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, (cwd / "block.out").read_text(),
                                       (cwd / "block.err").read_text())


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Three nodes on 127.0.0.1, started as the docs start them; yields the first port."""
    scratch = tmp_path_factory.mktemp("docs-grid")
    base = _free_base()
    env = {**_env(scratch), "JOBGRID_EXIT_WITH_PARENT": str(os.getpid())}  # a killed run leaves no node behind
    procs = [subprocess.Popen([str(BIN / "jobgrid"), "server", str(base + i), *(["127.0.0.1", str(base)] if i else []),
                               "--data-dir", str(scratch / f"n{i}"), "--runners", "2"], cwd=scratch, env=env,
                              stdout=open(scratch / f"n{i}.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True) for i in range(3)]
    try:
        _wait_healthy([base, base + 1, base + 2])
        yield base
    finally:  # SIGTERM first: a node stops its worker processes on the way out
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)


def _free_base() -> int:
    base = listen_port(["127.0.0.1"])
    while not all(_free(base + i) for i in range(3)):
        base = listen_port(["127.0.0.1"])
    return base


def _free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _job_ids(base: int, n: int, seconds: float = 0.0) -> list[str]:
    """Ids of real jobs (finished ones, or queued ones that take `seconds`) to stand in for placeholders."""
    with Client(f"http://127.0.0.1:{base}", token=TOKEN) as c:
        futs = c.submit_many([build_spec("call", target="jobgrid.examples:sleep", args=[seconds, i])
                              for i in range(n)])
        if not seconds:
            [f.result(timeout=60) for f in futs]
        return [f.job_id for f in futs]


@pytest.mark.parametrize("key,lang,body", RUNNABLE, ids=[k for k, _, _ in RUNNABLE])
def test_documented_example_runs(key, lang, body, grid, tmp_path):
    if key in SKIP:
        pytest.skip(SKIP[key])
    if key in TOUR[1:]:
        pytest.skip(f"runs with {TOUR[0]}, in the same shell session (the README's tour)")
    env = _env(tmp_path)
    if key == TOUR[0]:
        _readme_tour(tmp_path, env)
        return
    if lang == "toml":
        from jobgrid import config
        (tmp_path / "jobgrid.toml").write_text(body)
        assert config.load(tmp_path / "jobgrid.toml"), "a documented setting file with no settings"
        return
    if lang == "python":
        script = _ports(body, grid)
        r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"{key} failed:\n{script}\n--- stderr:\n{r.stderr[-3000:]}"
        return
    own = "jobgrid server" in body  # a block that starts its own node gets ports of its own
    script = _ports(body, _free_base() if own else grid)
    env["JOBGRID_PORT"] = str(grid)  # the commands that name no node talk to the default port's node
    # placeholders become real jobs, made only for a block that names them: a long job nobody cancels
    # would hold a runner of the shared grid (until its 300 s timeout) and stall every later block
    if "3f2a" in script:
        done = _job_ids(grid, 1)
        script = script.replace("3f2a...", done[0]).replace('"job_id": "3f2a', f'"job_id": "{done[0][:4]}')
    if "77b0..." in script:
        queued = _job_ids(grid, 2, seconds=600)  # still queued or running when the block cancels them
        script = script.replace("77b0...", queued[0]).replace("c41d...", queued[1])
    if "job.py" in script:
        (tmp_path / "job.py").write_text("import sys\nprint('job', *sys.argv[1:])\n")
    if "node*.log" in script:  # the logging example: a job's and its batch's lines in the node's log
        port = re.search(r"jobgrid server (\d+)", script).group(1)
        script = re.sub(r"^(jobgrid server .*&.*)$", r"\1\nwait_healthy " + port + "\necho 'print(1)' > j.py\n"
                        "jobgrid submit j.py --wait --port " + port + " > sub.out\nJID=$(head -n1 sub.out)\n"
                        "CAUSE=$(grep -o '\"cause\": \"sub-[0-9a-f]*' node.log | head -n1 | cut -d'\"' -f4)",
                        script, count=1, flags=re.M)
        script = (script.replace("'\"job_id\": \"" + done[0][:4] + "'", '"\\"job_id\\": \\"${JID:0:4}"')
                  .replace("'\"cause\": \"sub-9c1e'", '"\\"cause\\": \\"${CAUSE:0:8}"'))
    r = _run_bash(_background_waits(script), tmp_path, env)
    assert r.returncode == 0, f"{key} failed (exit {r.returncode}):\n{script}\n--- stdout:\n{r.stdout[-2000:]}" \
                              f"\n--- stderr:\n{r.stderr[-3000:]}"


def _readme_tour(scratch: Path, env: dict[str, str]) -> None:
    """README's tour: start three nodes, submit from Python, then the command line, in one shell."""
    found = {k: body for k, _, body in blocks()}
    base = _free_base()
    (scratch / ".venv").symlink_to(BIN.parent)  # `. .venv/bin/activate`, as in a checkout
    (scratch / "tour.py").write_text(_ports(found[TOUR[1]], base))
    shell = _ports(found[TOUR[0]], base) + "\npython tour.py\n" + _ports(found[TOUR[2]], base)
    # JOB_ID: the id the `jobgrid submit ... --wait` line printed first
    shell = re.sub(r"^(jobgrid submit [^#\n]*)(#.*)?$", r"\1 | tee submit.out\nJOB_ID=$(head -n1 submit.out)",
                   shell, flags=re.M)
    shell = shell.replace("jobgrid result JOB_ID", "jobgrid result \"$JOB_ID\"")
    r = _run_bash(_background_waits(shell), scratch, env)
    assert r.returncode == 0, f"the README tour failed (exit {r.returncode}):\n{shell}\n--- stdout:\n" \
                              f"{r.stdout[-3000:]}\n--- stderr:\n{r.stderr[-3000:]}"
    assert "49" in r.stdout and "hello world" in r.stdout + r.stderr, r.stdout
