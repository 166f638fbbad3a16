"""`jobgrid leave [HOST [PORT]]`: ask a node to leave the grid gracefully, and wait until it has.

The node drains, hands its jobs over, leaves the ring and exits (docs/deploy.md, "Graceful leave");
this command returns once the node no longer answers (exit 0), or exits 1 if it still answers after
its leave timeout (plus a margin). Only the full client token or the peer secret may make a node
leave: a read-only token gets a 403. Kubernetes' preStop hook runs it against the pod's own node.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import time
import urllib.error
import urllib.request

from .errors import ConfigError, GridUnavailable, ProtocolError

_MARGIN = 15.0  # seconds past the node's own leave timeout before we say it did not leave


def add_leave_command(sub: argparse._SubParsersAction) -> None:
    lv = sub.add_parser("leave", help="make a node leave the grid gracefully: jobgrid leave [HOST [PORT]]")
    lv.add_argument("host", nargs="?", default="127.0.0.1", help="the node's host (default 127.0.0.1)")
    lv.add_argument("port", nargs="?", type=int, default=None, help="its port (env JOBGRID_PORT; default 8000)")
    lv.add_argument("--token-file", help="the full client token (env JOBGRID_TOKEN / JOBGRID_TOKEN_FILE)")
    lv.add_argument("--peer-secret-file",
                    help="or the grid's peer secret (env JOBGRID_PEER_SECRET / JOBGRID_PEER_SECRET_FILE)")
    lv.add_argument("--tls-ca", help="CA bundle to verify an https node (env JOBGRID_TLS_CA)")
    lv.add_argument("--https", action="store_true", help="the node serves https (TLS)")
    lv.add_argument("--no-wait", action="store_true", help="return once the node has begun to leave")
    lv.set_defaults(fn=cmd_leave)


def _credential(args: argparse.Namespace) -> str | None:
    from .cli import _read_token, _secret
    if args.peer_secret_file or (not args.token_file and not _read_token(args)):
        secret = _secret(args.peer_secret_file, "JOBGRID_PEER_SECRET")
        if secret:
            return secret
    return _read_token(args)


def cmd_leave(args: argparse.Namespace) -> int:
    from .cli import err, out
    port = args.port if args.port is not None else int(os.environ.get("JOBGRID_PORT", "8000"))
    if not 0 < port < 65536:
        raise ConfigError(f"port must be 1-65535, got {port}")
    scheme = "https" if args.https else "http"
    ca = args.tls_ca or os.environ.get("JOBGRID_TLS_CA")
    ctx = ssl.create_default_context(cafile=ca) if scheme == "https" else None
    base = f"{scheme}://{'[' + args.host + ']' if ':' in args.host else args.host}:{port}"
    cred = _credential(args)
    headers = {"Authorization": f"Bearer {cred}"} if cred else {}
    req = urllib.request.Request(f"{base}/leave", data=b"{}", method="POST",
                                 headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            answer = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        body = e.read()[:500].decode(errors="replace")
        try:
            body = json.loads(body).get("error", body)
        except (ValueError, AttributeError):
            pass
        raise ProtocolError(f"{base} refused to leave ({e.code}): {body}", e.code) from None
    except (urllib.error.URLError, OSError) as e:
        raise GridUnavailable(f"no node answers at {base}: {getattr(e, 'reason', e)}") from None
    timeout = float(answer.get("timeout", 60.0))
    err.print(f"{base}: node {answer.get('node', '?')} is leaving (at most {timeout:g} s)")
    if args.no_wait:
        return 0
    end = time.monotonic() + timeout + _MARGIN
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{base}/healthz", headers=headers), timeout=2,
                                        context=ctx):
                pass
        except urllib.error.HTTPError:
            pass  # 503 "leaving": still draining
        except (urllib.error.URLError, OSError):
            out.print(f"node {answer.get('node', '?')} has left the grid")
            return 0
        time.sleep(0.2)
    err.print(f"{base} still answers {timeout + _MARGIN:g} s after it was asked to leave", style="bold red")
    return 1
