"""Issue 6: `jobgrid submit SCRIPT --repeat N --wait` shows a progress bar of N until all results
are in, then a one-line summary and each failure. Run through the real CLI against a live node."""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = """\
import os, sys
slots = sys.argv[1]
for i in range(2):  # exactly two copies claim a failure slot, whatever the order
    try:
        os.close(os.open(os.path.join(slots, f"fail{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        continue
    raise SystemExit(f"planned failure {i}")
print("fine")
"""


def _plain(text: str) -> str:
    """Drop the terminal control sequences (TTY_COMPATIBLE makes rich emit them)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_submit_repeat_wait_progress_summary_and_failures(cluster_factory, tmp_path):
    c = cluster_factory(runners=2, replicas=1)
    (n1,) = c.up(1)
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    slots = tmp_path / "slots"
    slots.mkdir()
    env = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120"}
    env.pop("JOBGRID_TOKEN", None)
    proc = subprocess.run([sys.executable, "-m", "jobgrid.cli", "submit", str(script), str(slots),
                           "--repeat", "10", "--wait", "--wait-timeout", "120", "--address", n1.url],
                          capture_output=True, text=True, timeout=180, env=env)
    out, err = _plain(proc.stdout), _plain(proc.stderr)
    assert proc.returncode == 1, (proc.returncode, out, err)  # some jobs failed
    ids = [line for line in out.splitlines() if len(line) == 32 and all(ch in "0123456789abcdef" for ch in line)]
    assert len(set(ids)) == 10, out
    assert "8/10 succeeded, 2 failed" in out, out
    assert out.count(": failed") == 2 and "planned failure" in out, out
    assert "10/10" in err, f"no progress bar of 10 on stderr: {err!r}"
    assert sorted(os.listdir(slots)) == ["fail0", "fail1"]

    ok = subprocess.run([sys.executable, "-m", "jobgrid.cli", "submit", str(script), str(slots),
                         "--repeat", "3", "--wait", "--address", n1.url],
                        capture_output=True, text=True, timeout=180, env=env)
    assert ok.returncode == 0 and "3/3 succeeded, 0 failed" in _plain(ok.stdout), (ok.stdout, ok.stderr)

    bad = subprocess.run([sys.executable, "-m", "jobgrid.cli", "submit", str(script), "--repeat", "0",
                          "--address", n1.url], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "--repeat" in bad.stderr, (bad.returncode, bad.stderr)
