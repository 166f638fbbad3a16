"""Node settings: one frozen dataclass, defaults in one place, checked once on entry."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from .errors import ConfigError
from .swim.config import SwimConfig, membership_mode


JOB_KINDS: frozenset[str] = frozenset({"pickle", "script", "call"})
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def default_data_dir(port: int) -> Path:
    return Path(platformdirs.user_data_dir("jobgrid")) / f"node-{port}"


@dataclass(frozen=True, kw_only=True)
class Timing:
    """Durations in seconds."""

    heartbeat_interval: float = 0.5
    failure_timeout: float = 2.0
    lease_ttl: float = 3.0
    lock_ttl: float = 5.0
    job_timeout: float = 300.0
    join_timeout: float = 60.0
    leave_timeout: float = 60.0  # a graceful leave (SIGTERM, `jobgrid leave`) ends within this; then exit anyway
    leave_grace: float = 45.0    # running jobs may finish this long in a leave (at most 3/4 of the timeout)

    def check(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v <= 0:
                raise ConfigError(f"{f.name} must be a positive number of seconds, got {v!r}")
        if self.failure_timeout < 2 * self.heartbeat_interval:
            raise ConfigError("failure_timeout must be at least twice heartbeat_interval "
                              f"({self.failure_timeout} < 2 x {self.heartbeat_interval})")


@dataclass(frozen=True, kw_only=True)
class PeerTimeouts:
    """Seconds each kind of peer message may take, derived from `Timing` in one place (`of`)."""

    heartbeat: float = 2.0   # a beat: no longer than the failure timeout it feeds
    announce: float = 2.0    # a ring pushed to a member (POST /peer/ring)
    control: float = 2.0     # ring fetches, add_lock and unlock, steals
    recovery: float = 2.0    # a restarting node asking the members of its saved ring
    replicate: float = 5.0   # copies of jobs and results (an ack waits for them)
    lookup: float = 2.0      # where is a job (a client waits behind it)
    bulk: float = 10.0       # handoffs and result reports (many jobs at once)
    renew: float = 1.0       # lease renewals: a third of the lease, so a slow owner cannot let it lapse
    call: float = 5.0        # anything else (a forwarded cancel)

    @classmethod
    def of(cls, t: Timing) -> PeerTimeouts:
        ft = t.failure_timeout
        return cls(heartbeat=ft, announce=ft, recovery=min(2.0, ft), replicate=max(5.0, ft),
                   lookup=min(3.0, max(1.0, ft)), renew=t.lease_ttl / 3)

    def for_path(self, path: str, method: str = "POST") -> float:
        name = _PEER_TIMEOUT.get((method, path.split("?", 1)[0]), "call")
        return getattr(self, name)


_PEER_TIMEOUT = {
    ("POST", "/peer/heartbeat"): "heartbeat", ("POST", "/peer/ring"): "announce", ("GET", "/peer/ring"): "control",
    ("POST", "/peer/lock"): "control", ("POST", "/peer/unlock"): "control", ("POST", "/peer/steal"): "control",
    ("GET", "/peer/recovery"): "recovery", ("POST", "/peer/replicate"): "replicate",
    ("POST", "/peer/lookup"): "lookup", ("POST", "/peer/handoff"): "bulk", ("POST", "/peer/report"): "bulk",
    ("POST", "/peer/renew"): "renew", ("POST", "/peer/leave"): "control",
}


@dataclass(frozen=True, kw_only=True)
class TLS:
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True, kw_only=True)
class NodeSettings:
    port: int
    host: str = "127.0.0.1"
    advertise: str | None = None
    join: tuple[str, int] | None = None
    runners: int = field(default_factory=lambda: os.cpu_count() or 1)
    data_dir: Path | None = None
    replicas: int | None = None  # None: adopt the grid's (a new grid keeps 3)
    token: str | None = field(default=None, repr=False)  # the full client token
    read_token: str | None = field(default=None, repr=False)  # a read-only client token
    peer_secret: str | None = field(default=None, repr=False)  # what nodes prove themselves with (no mTLS)
    job_user: str | None = None  # run jobs as this account (the node must be root)
    allow_kinds: frozenset[str] = JOB_KINDS
    allow_modules: tuple[str, ...] = ()  # call targets' modules (and their submodules); () = any
    max_pending_per_client: int | None = 128  # connections per client IP whose request head is not in yet
    header_timeout: float = 10.0  # seconds a new connection has to send its first request head
    max_streams_per_client: int | None = 32  # open /stream WebSockets per client IP (peers: no limit)
    insecure: bool = False
    tls: TLS = field(default_factory=TLS)
    timing: Timing = field(default_factory=Timing)
    max_queued: int = 1_000_000
    max_body: int = 64 * 1024 * 1024
    max_conns_per_client: int = 64
    max_crashes: int = 3
    body_timeout: float = 30.0  # seconds a client has to send a request's body; then 408
    peer_transport: str = "stream"  # "stream": peer messages over one WebSocket per peer; "http": a request each
    membership: str = "auto"  # "all-to-all" | "swim" | "auto" (SWIM above 32 members): jobgrid/swim/config.py
    swim: SwimConfig = field(default_factory=SwimConfig)
    # a peer's advertised (host, port) -> the (host, port) to dial instead (NAT, sidecars, the harness's proxies)
    dial: tuple[tuple[tuple[str, int], tuple[str, int]], ...] = ()
    # restarting after an outage, bring the grid up from the members that are back even without a majority of
    # the saved ring (the rest are removed): an operator's decision for members that are gone for good
    force_new_cluster: bool = False
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not (0 < self.port < 65536):
            raise ConfigError(f"port must be 1-65535, got {self.port}")
        if self.runners < 0 or self.runners > 512:
            raise ConfigError(f"--runners must be 0-512, got {self.runners}")
        if self.replicas is not None and not (1 <= self.replicas <= 16):
            raise ConfigError(f"--replicas must be 1-16, got {self.replicas}")
        if self.join is not None and not (0 < self.join[1] < 65536):
            raise ConfigError(f"join port must be 1-65535, got {self.join[1]}")
        membership_mode(self.membership, 1)  # refuses an unknown mode with the list of modes
        if self.peer_transport not in ("stream", "http"):
            raise ConfigError(f"peer transport must be stream or http, got {self.peer_transport!r}")
        if not self.body_timeout > 0:
            raise ConfigError(f"--body-timeout must be a positive number of seconds, got {self.body_timeout!r}")
        if self.max_queued < 1:
            raise ConfigError("max_queued must be at least 1")
        self._check_credentials()
        if not self.allow_kinds or not self.allow_kinds <= JOB_KINDS:
            raise ConfigError(f"--allow-kinds must name some of {', '.join(sorted(JOB_KINDS))}, "
                              f"got {', '.join(sorted(self.allow_kinds)) or 'nothing'}")
        for m in self.allow_modules:
            if not _MODULE.match(m):
                raise ConfigError(f"--allow-modules: {m!r} is not a module name (like mypkg or mypkg.tasks)")
        for name in ("max_pending_per_client", "max_streams_per_client"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if not self.header_timeout > 0:
            raise ConfigError(f"--header-timeout must be a positive number of seconds, got {self.header_timeout!r}")
        if bool(self.tls.cert) != bool(self.tls.key):
            raise ConfigError("--tls-cert and --tls-key go together")
        self.timing.check()
        if self.data_dir is None:
            object.__setattr__(self, "data_dir", default_data_dir(self.port))
        if not self.token and not self.insecure and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host} without a cluster token: anyone who reaches "
                "this address could run code here. Give --token-file/JOBGRID_TOKEN, or --insecure "
                "if you really mean it.")

    def _check_credentials(self) -> None:
        given = {"the cluster token": self.token, "the read-only token": self.read_token,
                 "the peer secret": self.peer_secret}
        for what, v in given.items():
            if v is None:
                continue
            if len(v) < 16:
                raise ConfigError(f"{what} must be at least 16 characters")
            if not all(32 < ord(c) < 127 for c in v):
                raise ConfigError(f"{what} must be printable ASCII without spaces")
        values = [v for v in given.values() if v]
        if len(set(values)) != len(values):
            raise ConfigError("the cluster token, the read-only token and the peer secret must all differ")
        if self.read_token and not self.token:
            raise ConfigError("a read-only token needs a full cluster token too (--token-file)")
        if self.token and not self.peer_secret and not self.mtls:
            raise ConfigError(
                "a cluster token without a peer credential would let every client speak as a node: give the "
                "nodes a peer secret (--peer-secret-file or JOBGRID_PEER_SECRET; clients never get it) or "
                "mutual TLS (--tls-cert, --tls-key and --tls-ca)")
        if self.job_user is not None:
            try:
                pwd.getpwnam(self.job_user)
            except KeyError:
                raise ConfigError(f"--job-user {self.job_user}: no such account") from None
            if os.geteuid() != 0:
                raise ConfigError("--job-user needs the node to run as root (it starts jobs as that account)")

    @property
    def mtls(self) -> bool:
        """Nodes verify each other's certificates against the CA: a verified client certificate is a peer."""
        return self.tls.enabled and self.tls.ca is not None

    @property
    def advertised_host(self) -> str:
        if self.advertise:
            return self.advertise
        if self.host in ("0.0.0.0", "::", ""):
            return "127.0.0.1"
        return self.host

    @property
    def scheme(self) -> str:
        return "https" if self.tls.enabled else "http"


def parse_dial(text: str) -> tuple[tuple[tuple[str, int], tuple[str, int]], ...]:
    """`ADVERTISED=DIAL[,ADVERTISED=DIAL...]`, each side `HOST:PORT` (IPv6 as `[::1]:8000`)."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        peer, sep, dial = item.partition("=")
        if not sep:
            raise ConfigError(f"dial entry {item!r} must be ADVERTISED_HOST:PORT=DIAL_HOST:PORT")
        out.append((_host_port(peer, "dial"), _host_port(dial, "dial")))
    return tuple(out)


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: {text!r} is not HOST:PORT")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
