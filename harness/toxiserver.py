"""Where a Toxiproxy server comes from, and running one (a local process or a container image).

In order: an existing server named by ``TOXIPROXY_URL`` (the local backend uses it as it is); a
``toxiproxy-server`` on ``PATH``; one built earlier into the cache (``~/.cache/jobgrid/toxiproxy-2.12.0``,
outside the repository); one built there now from ``shared/toxiproxy/build.sh`` found beside the
repository (Toxiproxy's source, built offline in about a minute). Otherwise `ToxiproxyUnavailable`
names the ways to get one. ``python -m harness.toxiserver`` does the same and prints the binary's path
(`scripts/ensure-toxiproxy.sh`, called by ``make test``).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .errors import HarnessError, ImageBuildError

VERSION = "2.12.0"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("JOBGRID_TOXIPROXY_IMAGE") or f"jobgrid-toxiproxy:{VERSION}"
API_PORT = 8474


class ToxiproxyUnavailable(HarnessError):
    """No Toxiproxy server can be had here."""


HOW_TO_GET = ("get a Toxiproxy server one of these ways: put toxiproxy-server on PATH (a release binary from "
              "github.com/Shopify/toxiproxy/releases on a machine with internet access), set TOXIPROXY_URL to a "
              "running server (local backend), or place Toxiproxy's source with build.sh in shared/toxiproxy/ "
              "beside the repository and run scripts/ensure-toxiproxy.sh")


def cache_dir() -> Path:
    import platformdirs  # noqa: PLC0415
    root = os.environ.get("JOBGRID_CACHE_DIR") or platformdirs.user_cache_dir("jobgrid")
    return Path(root) / f"toxiproxy-{VERSION}"


def build_script() -> Path | None:
    """shared/toxiproxy/build.sh in the repository's folder or any folder above it (worktrees sit deeper)."""
    for d in (PROJECT_ROOT, *PROJECT_ROOT.parents):
        p = d / "shared" / "toxiproxy" / "build.sh"
        if p.is_file():
            return p
    return None


def server_url() -> str | None:
    """TOXIPROXY_URL, normalised (http://host:port), when set."""
    raw = os.environ.get("TOXIPROXY_URL", "").strip().rstrip("/")
    if not raw:
        return None
    return raw if "://" in raw else f"http://{raw}"


def _works(binary: Path) -> bool:
    try:
        r = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def find_binary(*, build: bool = True) -> Path:
    """The toxiproxy-server binary: PATH, the cache, else built into the cache (once, under a lock)."""
    on_path = shutil.which("toxiproxy-server")
    if on_path:
        return Path(on_path)
    cached = cache_dir() / "toxiproxy-server"
    if cached.is_file() and _works(cached):
        return cached
    script = build_script()
    if not build or script is None:
        raise ToxiproxyUnavailable(f"no toxiproxy-server on PATH or in {cached.parent}; " + HOW_TO_GET)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with open(cached.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs building at once: the second waits and reuses
        if cached.is_file() and _works(cached):
            return cached
        print(f"[harness] building toxiproxy-server {VERSION} into {cached.parent} (about a minute, once)",
              file=sys.stderr, flush=True)
        r = subprocess.run(["bash", str(script), str(cached.parent)], capture_output=True, text=True)
        if r.returncode != 0 or not _works(cached):
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-20:])
            raise ToxiproxyUnavailable(f"building Toxiproxy with {script} failed (exit {r.returncode}):\n{tail}\n"
                                       + HOW_TO_GET)
    return cached


def available() -> bool:
    """Whether a Toxiproxy server can be had without building one."""
    if server_url():
        return True
    try:
        find_binary(build=False)
        return True
    except ToxiproxyUnavailable:
        return build_script() is not None


def answers(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/version", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalToxiproxy:
    """A toxiproxy-server process on a loopback address, started and stopped by its owner."""

    def __init__(self, host: str, port: int, log_path: Path, *, exit_with_parent: bool = False) -> None:
        self.host, self.port, self.log_path = host, port, log_path
        self.exit_with_parent = exit_with_parent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> LocalToxiproxy:
        binary = find_binary()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(binary), "-host", self.host, "-port", str(self.port)], stdout=log,
                                     stderr=subprocess.STDOUT, env={**os.environ, "LOG_LEVEL": "warn"},
                                     start_new_session=True,
                                     preexec_fn=_die_with_parent if self.exit_with_parent else None)
        log.close()
        end = time.monotonic() + timeout
        while not answers(self.url, 0.5):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                raise ToxiproxyUnavailable(f"toxiproxy-server on {self.host}:{self.port} did not start; log: "
                                           + self.log_path.read_text(errors="replace")[-500:])
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def ensure_image(client: Any) -> str:
    """The Toxiproxy container image: the static binary on an empty (scratch) image, built with no network."""
    from .images import image_exists  # noqa: PLC0415
    if image_exists(client, IMAGE):
        return IMAGE
    binary = find_binary()
    with tempfile.TemporaryDirectory(prefix="jobgrid-toxiproxy-") as tmp:
        shutil.copy2(binary, Path(tmp) / "toxiproxy-server")
        (Path(tmp) / "Dockerfile").write_text(
            "FROM scratch\nCOPY toxiproxy-server /toxiproxy-server\nENV LOG_LEVEL=warn\n"
            f"EXPOSE {API_PORT}\n"
            f'ENTRYPOINT ["/toxiproxy-server", "-host", "0.0.0.0", "-port", "{API_PORT}"]\n')
        error = None
        try:
            for chunk in client.api.build(path=tmp, tag=IMAGE, network_mode="none", rm=True, forcerm=True,
                                          pull=False, decode=True):
                error = chunk.get("error", error)
        except Exception as exc:  # noqa: BLE001 - docker SDK / API errors
            raise ImageBuildError(f"docker build of {IMAGE} failed: {exc}") from exc
    if error or not image_exists(client, IMAGE):
        raise ImageBuildError(f"docker build of {IMAGE} failed: {error}")
    return IMAGE


def main() -> int:
    """Print where the Toxiproxy server is (building it into the cache once if need be)."""
    try:
        url = server_url()
        if url and answers(url):
            print(f"ensure-toxiproxy: a server answers at TOXIPROXY_URL={url}")
        binary = find_binary()
        print(f"ensure-toxiproxy: {binary} ({subprocess.run([str(binary), '-version'], capture_output=True, text=True).stdout.strip()})")
    except HarnessError as e:
        print(f"ensure-toxiproxy: ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
