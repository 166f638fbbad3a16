"""Docker images for the harness, built offline.

No registry is reachable where the harness runs, so `python:3.11-slim` cannot be pulled.
Instead:

* `build_base_image` makes ``jobgrid-base:bookworm`` from Debian packages with debootstrap
  (using the mirror apt is already configured with) and ``docker import``;
* `build_wheelhouse` turns the project and its runtime dependencies into wheels on the host;
* `build_node_image` builds the repository's ``Dockerfile`` on top of a base image from a
  small temporary context (Dockerfile + wheels), with no network during the build.

`ensure_images` is what ``harness image`` and ``harness up`` call.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Iterable

from harness.errors import DockerUnavailable, HarnessError, ImageBuildError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

BASE_TAG = "jobgrid-base:bookworm"
# JOBGRID_NODE_IMAGE names the node image (one per checkout when several build on one Docker host)
NODE_TAG = os.environ.get("JOBGRID_NODE_IMAGE") or "jobgrid-node:latest"
PULL_BASE = "python:3.11-slim"
SUITE = "bookworm"
DEBOOTSTRAP_INCLUDE = (
    "python3",
    "python3-venv",
    "python3-pip-whl",
    "python3-setuptools-whl",
    "iproute2",
    "iptables",
    "ca-certificates",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")

BASE_MODES = ("auto", "debian", "pull")
LOG_TAIL_LINES = 40

# What never goes into a wheel-building copy of the project.
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info",
    ".pytest_cache", ".harness", "runs", "wheels", "node_modules", "test-artifacts",
    "results", ".mypy_cache", ".ruff_cache",
)


def _log(msg: str) -> None:
    print(f"[harness.images] {msg}", file=sys.stderr, flush=True)


def _tail(text: str | Iterable[str], n: int = LOG_TAIL_LINES) -> str:
    lines = text.splitlines() if isinstance(text, str) else list(text)
    return "\n".join(line.rstrip("\n") for line in lines[-n:])


# --------------------------------------------------------------------------- docker client


def docker_client(timeout: int = 300) -> Any:
    """A Docker SDK client that is known to answer, or `DockerUnavailable`."""
    try:
        import docker  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DockerUnavailable(
            "the 'docker' Python package is missing: pip install 'jobgrid[harness]'"
        ) from exc
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # docker.errors.DockerException, requests errors, ...
        raise DockerUnavailable(
            f"no Docker Engine answers ({exc}); start one with: sudo scripts/ensure-docker.sh"
        ) from exc
    return client


def image_exists(client: Any, tag: str) -> bool:
    import docker.errors  # noqa: PLC0415

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


# --------------------------------------------------------------------------- base image


def _one_line_sources(text: str) -> Iterable[tuple[list[str], list[str], list[str]]]:
    """(uris, suites, components) for each `deb URI SUITE COMP...` line of a .list file."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        parts = line.split()[1:]
        if parts and parts[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while parts and not parts[0].endswith("]"):
                parts.pop(0)
            parts = parts[1:]
        if len(parts) >= 2:
            yield [parts[0]], [parts[1]], parts[2:]


def _deb822_sources(text: str) -> Iterable[tuple[list[str], list[str], list[str]]]:
    """(uris, suites, components) for each stanza of a deb822 .sources file."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.lstrip().startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
                continue
            if ":" in raw:
                key, _, value = raw.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        yield (
            fields.get("uris", "").split(),
            fields.get("suites", "").split(),
            fields.get("components", "").split(),
        )


def find_debian_mirror(
    suite: str = SUITE,
    sources_list: Path = APT_SOURCES,
    sources_dir: Path = APT_SOURCES_DIR,
) -> str:
    """The URI apt on this machine uses for `suite main` (e.g. http://deb.debian.org/debian)."""
    entries: list[tuple[list[str], list[str], list[str]]] = []
    files: list[Path] = []
    if sources_list.is_file():
        files.append(sources_list)
    if sources_dir.is_dir():
        files += sorted(p for p in sources_dir.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        parser = _deb822_sources if path.suffix == ".sources" else _one_line_sources
        entries.extend(parser(text))
    for uris, suites, components in entries:
        if suite in suites and "main" in components and uris:
            return uris[0].rstrip("/")
    env = os.environ.get("JOBGRID_DEBIAN_MIRROR")
    if env:
        return env.rstrip("/")
    raise ImageBuildError(
        f"no apt source for '{suite} main' found in {sources_list} or {sources_dir}/*.list|*.sources; "
        "set JOBGRID_DEBIAN_MIRROR to a Debian mirror URI"
    )


def build_base_image(
    client: Any,
    tag: str = BASE_TAG,
    force: bool = False,
    *,
    suite: str = SUITE,
    mirror: str | None = None,
) -> str:
    """Build (or reuse) a minimal Debian image with Python 3 from Debian packages.

    debootstrap --variant=minbase into a temporary directory, then import that root
    filesystem as `tag`. About a minute and ~250 MB. Needs root and debootstrap.
    """
    if not force and image_exists(client, tag):
        _log(f"base image {tag} already exists; reusing it")
        return tag
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "debootstrap is not installed (apt-get install -y debootstrap, or run scripts/ensure-docker.sh)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("building the base image with debootstrap needs root")
    mirror = mirror or find_debian_mirror(suite)
    workdir = Path(tempfile.mkdtemp(prefix="jobgrid-base-", dir=os.environ.get("JOBGRID_BUILD_TMP", "/var/tmp")))
    rootfs = workdir / "rootfs"
    try:
        cmd = [
            "debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}",
            suite, str(rootfs), mirror,
        ]
        _log(f"running: {' '.join(cmd)}")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            debootstrap_log = rootfs / "debootstrap" / "debootstrap.log"
            extra = debootstrap_log.read_text(errors="replace") if debootstrap_log.exists() else ""
            raise ImageBuildError(
                f"debootstrap failed (exit {proc.returncode}) with mirror {mirror}",
                _tail(proc.stdout + "\n" + extra),
            )
        # Trim what an image does not need.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            d = rootfs / sub
            if d.is_dir():
                for p in d.iterdir():
                    if p.is_file() and p.name not in ("lock",):
                        p.unlink()
        _import_rootfs(client, rootfs, tag)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _log(f"base image {tag} built")
    return tag


def _import_rootfs(client: Any, rootfs: Path, tag: str) -> None:
    """`tar -C rootfs -c . | docker import - tag`, streamed through the SDK."""
    repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        'CMD ["/bin/bash"]',
        "LABEL org.opencontainers.image.title=jobgrid-base",
    ]
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        try:
            client.api.import_image(
                src=tar.stdout, repository=repository, tag=version, changes=changes, stream_src=True
            )
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
            rc = tar.wait()
    except HarnessError:
        raise
    except Exception as exc:
        raise ImageBuildError(f"docker import of the base root filesystem as {tag} failed: {exc}") from exc
    if rc != 0:
        raise ImageBuildError(f"tar of the base root filesystem failed (exit {rc})", _tail(err))
    if not image_exists(client, tag):
        raise ImageBuildError(f"docker import finished but image {tag} is not there")


# --------------------------------------------------------------------------- wheels


def build_wheelhouse(project_root: Path | str = PROJECT_ROOT, out_dir: Path | str = "wheels") -> Path:
    """Wheels of the project and its runtime dependencies (not the extras) in `out_dir`.

    The project is copied to a temporary directory first so the build leaves nothing
    (build/, *.egg-info) in the working tree. Wheels already in `out_dir` are reused.
    """
    project_root = Path(project_root).resolve()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not (project_root / "pyproject.toml").is_file():
        raise ImageBuildError(f"{project_root} has no pyproject.toml")
    for stale in out.glob("jobgrid-*.whl"):  # the project's own wheel is always rebuilt
        stale.unlink()
    with tempfile.TemporaryDirectory(prefix="jobgrid-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(project_root, src, ignore=_COPY_IGNORE, symlinks=True)
        cmd = [
            sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check",
            "--find-links", str(out), "--wheel-dir", str(out), str(src),
        ]
        _log("building wheelhouse: pip wheel <project> -w " + str(out))
        # A fixed SOURCE_DATE_EPOCH makes the project's wheel byte-identical while the source
        # is unchanged, so Docker's layer cache makes rebuilding the node image nearly free.
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")}
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        raise ImageBuildError(f"pip wheel of {project_root} failed (exit {proc.returncode})", _tail(proc.stdout))
    if not list(out.glob("jobgrid-*.whl")):
        raise ImageBuildError(f"pip wheel ran but no jobgrid wheel is in {out}", _tail(proc.stdout))
    return out


# --------------------------------------------------------------------------- node image


def build_node_image(
    client: Any,
    base: str = BASE_TAG,
    tag: str = NODE_TAG,
    project_root: Path | str = PROJECT_ROOT,
) -> str:
    """Build the repository's Dockerfile on `base` from a context of Dockerfile + wheels/.

    The build runs with network_mode="none": everything comes from the wheelhouse.
    """
    project_root = Path(project_root).resolve()
    dockerfile = project_root / "Dockerfile"
    if not dockerfile.is_file():
        raise ImageBuildError(f"no Dockerfile at {dockerfile}")
    if not image_exists(client, base):
        raise ImageBuildError(
            f"base image {base} is not present locally (no registry here); "
            f"build it first with harness.images.build_base_image or `harness image`"
        )
    old_id = client.images.get(tag).id if image_exists(client, tag) else None
    with tempfile.TemporaryDirectory(prefix="jobgrid-ctx-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(dockerfile, ctx / "Dockerfile")
        build_wheelhouse(project_root, ctx / "wheels")
        _log(f"building {tag} on {base} (network none)")
        log: deque[str] = deque(maxlen=400)
        error: str | None = None
        try:
            for chunk in client.api.build(
                path=str(ctx),
                tag=tag,
                buildargs={"BASE_IMAGE": base},
                network_mode="none",
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            ):
                if "stream" in chunk:
                    log.extend(chunk["stream"].splitlines())
                if "error" in chunk:
                    error = chunk["error"].strip()
                    log.append(error)
        except Exception as exc:
            raise ImageBuildError(f"docker build of {tag} failed: {exc}", _tail(log)) from exc
    if error:
        raise ImageBuildError(f"docker build of {tag} on {base} failed: {error}", _tail(log))
    if not image_exists(client, tag):
        raise ImageBuildError(f"docker build of {tag} ended without an image", _tail(log))
    new_id = client.images.get(tag).id
    if old_id and old_id != new_id:
        _remove_if_dangling(client, old_id)
    _log(f"node image {tag} built ({new_id[7:19]})")
    return tag


def _remove_if_dangling(client: Any, image_id: str) -> None:
    """Drop the previous build of a tag once nothing names it (best effort)."""
    try:
        if not client.images.get(image_id).tags:
            client.images.remove(image_id, noprune=False)
    except Exception:  # in use by a container, already gone, ...
        pass


def ensure_images(
    client: Any = None,
    base_mode: str = "auto",
    *,
    node_tag: str = NODE_TAG,
    force_base: bool = False,
    project_root: Path | str = PROJECT_ROOT,
) -> str:
    """Make sure the node image exists and matches the source tree; return its tag.

    base_mode:
      * "debian": build (or reuse) jobgrid-base:bookworm with debootstrap;
      * "pull":   use python:3.11-slim, pulling it if it is not present (needs a registry);
      * "auto":   reuse jobgrid-base:bookworm or a local python:3.11-slim if present,
                  otherwise debootstrap when possible, otherwise pull.
    The node image is always rebuilt (Docker's layer cache keeps that quick) so it carries
    the current source.
    """
    if base_mode not in BASE_MODES:
        raise HarnessError(f"base_mode must be one of {', '.join(BASE_MODES)}, not {base_mode!r}")
    if client is None:
        client = docker_client()
    if base_mode == "debian":
        base = build_base_image(client, BASE_TAG, force=force_base)
    elif base_mode == "pull":
        base = _pull_base(client)
    elif not force_base and image_exists(client, BASE_TAG):
        base = BASE_TAG
    elif not force_base and image_exists(client, PULL_BASE):
        base = PULL_BASE
    elif shutil.which("debootstrap") and os.geteuid() == 0:
        base = build_base_image(client, BASE_TAG, force=force_base)
    else:
        _log("debootstrap not usable here (needs root and debootstrap); trying to pull " + PULL_BASE)
        base = _pull_base(client)
    return build_node_image(client, base=base, tag=node_tag, project_root=project_root)


def _pull_base(client: Any) -> str:
    if image_exists(client, PULL_BASE):
        return PULL_BASE
    repository, _, version = PULL_BASE.partition(":")
    try:
        client.images.pull(repository, tag=version)
    except Exception as exc:
        raise ImageBuildError(
            f"cannot pull {PULL_BASE} ({exc}); without a registry use base_mode='debian'"
        ) from exc
    return PULL_BASE
