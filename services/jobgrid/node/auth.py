"""Who is calling, and what they may say: roles from credentials, browser checks, the peer's own name.

Roles (each may do what the ones below it may):

    peer   another node: `/peer/*` and peer frames on `/stream`, plus every client route. Proven by a
           client certificate that the node's `--tls-ca` verifies (mutual TLS), or by the peer secret.
    full   a client with the full token: submit and cancel jobs, make the node leave the grid (POST /leave),
           and everything `read` may.
    read   a client with the read-only token: dashboard, status, results, waits, lists, metrics.

A node with no credential configured at all (the loopback quick start) treats every caller as a peer:
one trust domain, reachable only from this machine. Decisions here are pure functions of the request's
parts, so they are unit-tested without a server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["read", "full", "peer"]
RANK: dict[str, int] = {"read": 1, "full": 2, "peer": 3}
SESSION_COOKIE = "jobgrid_session"
NODE_HEADER = "X-Jobgrid-Node"
_NODE_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
WRITE_ROUTES = frozenset({("POST", "/jobs"), ("POST", "/jobs/cancel"), ("POST", "/leave")})
FRAME_ROLES: dict[str, Role] = {"/jobs": "full", "/results/wait": "read"}


@dataclass(frozen=True)
class Caller:
    role: Role
    via: str                            # "token", "cookie", "cert", "secret", "open"
    node: str | None = None             # the node a peer says it is (X-Jobgrid-Node)
    names: frozenset[str] | None = None  # what its certificate covers (mutual TLS), else None


@dataclass(frozen=True)
class Credentials:
    """What a node accepts. Secrets as bytes; `None`: not configured."""

    full: bytes | None = None
    read: bytes | None = None
    peer: bytes | None = None
    mtls: bool = False

    @classmethod
    def of(cls, full: str | None, read: str | None, peer: str | None, mtls: bool) -> Credentials:
        b = (lambda s: s.encode() if s else None)
        return cls(b(full), b(read), b(peer), mtls)

    @property
    def open(self) -> bool:
        """No credential at all: the local quick start, everyone is everything."""
        return not (self.full or self.read or self.peer or self.mtls)

    @property
    def clients_open(self) -> bool:
        return not (self.full or self.read)

    def session(self, token: bytes) -> str:
        """The dashboard cookie's value for a token: derived from it, useless as a token itself."""
        return hmac.new(token, b"jobgrid dashboard session v1", hashlib.sha256).hexdigest()

    def match_token(self, given: bytes) -> Role | None:
        for role, secret in (("peer", self.peer), ("full", self.full), ("read", self.read)):
            if secret is not None and hmac.compare_digest(given, secret):
                return role  # type: ignore[return-value]
        return None

    def match_session(self, given: bytes) -> Role | None:
        for role, secret in (("full", self.full), ("read", self.read)):
            if secret is not None and hmac.compare_digest(given, self.session(secret).encode()):
                return role  # type: ignore[return-value]
        return None


def raw(value: str) -> bytes | None:
    """A header or cookie value as bytes, or None if it is not printable ASCII (aiohttp hands undecodable
    bytes over as surrogates: such a credential can match nothing)."""
    try:
        b = value.encode("ascii")
    except UnicodeEncodeError:
        return None
    return b if all(32 < c < 127 for c in b) else None


def cert_names(peercert: dict | None) -> frozenset[str] | None:
    """The DNS names and IP addresses a verified certificate covers (None: no certificate)."""
    if not peercert:
        return None
    names = {v for k, v in peercert.get("subjectAltName", ()) if k in ("DNS", "IP Address")}
    for rdn in peercert.get("subject", ()):
        names |= {v for k, v in rdn if k == "commonName"}
    return frozenset(names)


def identify(creds: Credentials, *, authorization: str | None, cookie: str | None, node_header: str | None,
             peercert: dict | None) -> Caller | None | str:
    """The caller, None (no or wrong credential: 401), or a reason string (a malformed credential: 401)."""
    node = node_header if node_header and _NODE_ID.match(node_header) else None
    names = cert_names(peercert) if creds.mtls else None
    if names is not None:
        return Caller("peer", "cert", node, names)
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        given = raw(value.strip())
        if scheme != "Bearer" or given is None:
            return "malformed Authorization header (expected: Bearer <token>)"
        role = creds.match_token(given)
        if role is None:
            return None
        return Caller(role, "secret" if role == "peer" else "token", node if role == "peer" else None)
    if cookie is not None:
        given = raw(cookie)
        role = creds.match_session(given) if given is not None else None
        if role is not None:
            return Caller(role, "cookie")
        if not creds.clients_open:
            return None
    if creds.open:
        return Caller("peer", "open", node)
    if creds.clients_open:
        return Caller("full", "open")
    return None


def required_role(method: str, path: str) -> Role:
    if path.startswith("/peer/"):
        return "peer"
    if (method, path) in WRITE_ROUTES:
        return "full"
    return "read"


def may(caller: Caller, role: Role) -> bool:
    return RANK[caller.role] >= RANK[role]


def refusal(caller: Caller, role: Role, what: str) -> str:
    if role == "peer":
        return f"{what} is for peers (nodes of this grid): a client credential cannot send it"
    return (f"{what} needs the full client token; this credential is read-only "
            "(dashboard, status, results, metrics)")


def origin_ok(origin: str | None, scheme: str, host: str | None) -> bool:
    """A browser's request from the node's own origin (or from no browser at all)."""
    if origin is None:
        return True
    return host is not None and origin == f"{scheme}://{host}"


def host_ok(host: str | None, allowed: frozenset[str]) -> bool:
    """For an open node: the Host header names an IP address, localhost or the node's own name, so a page
    on a DNS name rebound to 127.0.0.1 cannot reach it."""
    if not host:
        return True
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def named_ok(caller: Caller, named: str, address: str | None) -> str | None:
    """None if a peer message naming node `named` (whose ring address is `address`, if known) may come from
    `caller`; else why not."""
    if caller.role != "peer" or caller.via == "open":
        return None
    if caller.node is None:
        return f"peer messages must name their sending node ({NODE_HEADER} header)"
    if named != caller.node:
        return f"message names node {named!r} but comes from node {caller.node!r}"
    if caller.names is not None and address is not None and address not in caller.names:
        return f"node {named!r} is at {address}, which the caller's certificate does not cover"
    return None


def message_sender(msg: Any) -> str | None:
    """The node a peer message says it comes from."""
    for field in ("sender", "runner", "holder"):
        v = getattr(msg, field, None)
        if isinstance(v, str):
            return v
    return None


def code_refusal(kind: str, target: str | None, kinds: frozenset[str], modules: tuple[str, ...]) -> str | None:
    """Why a node that accepts only `kinds` (and, for calls, functions of `modules`) refuses a job, or None.

    With an allow-list, a target is `module:function`: a single public name, no attribute path (which
    could walk from an allowed module into one it imported)."""
    if kind not in kinds:
        return (f"this grid does not accept {kind} jobs (accepted: {', '.join(sorted(kinds))}); "
                "submit a registered function as module:function (submit_call)")
    if kind != "call" or not modules:
        return None
    module, _, attr = (target or "").partition(":")
    if "." in attr or attr.startswith("_"):
        return f"call target {target!r}: only a public top-level function of an allowed module may be called"
    if not any(module == m or module.startswith(m + ".") for m in modules):
        return f"call target {target!r}: module {module!r} is not in this grid's allowed modules ({', '.join(modules)})"
    return None
