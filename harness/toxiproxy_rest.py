"""The Toxiproxy REST calls `toxiproxy-python` lacks: server-side populate and updating a toxic.

Everything else goes through `toxiproxy-python` (harness/proxies.py). Toxiproxy's API:
``POST /populate`` creates (or replaces) many proxies in one call; ``POST /proxies/{p}/toxics/{t}``
changes a toxic's attributes in place (its connections keep flowing: no remove-then-add gap).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .errors import HarnessError


def _request(url: str, method: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        raise HarnessError(f"Toxiproxy {method} {url}: {e.code} {e.read()[:300].decode(errors='replace')}") from None
    except (OSError, urllib.error.URLError) as e:
        raise HarnessError(f"Toxiproxy at {url} does not answer: {e}") from None
    return json.loads(raw) if raw else None


def populate(api: str, proxies: list[dict]) -> list[dict]:
    """Create every proxy of `proxies` ({name, listen, upstream, enabled}) in one call; returns them."""
    out = _request(f"{api}/populate", "POST", proxies)
    return out.get("proxies", out) if isinstance(out, dict) else out


def update_toxic(api: str, proxy: str, toxic: str, attributes: dict, toxicity: float | None = None) -> dict:
    """Change a toxic's attributes (and toxicity) in place."""
    body: dict[str, Any] = {"attributes": attributes}
    if toxicity is not None:
        body["toxicity"] = toxicity
    return _request(f"{api}/proxies/{proxy}/toxics/{toxic}", "POST", body)


def proxies(api: str) -> dict[str, dict]:
    """Every proxy with its toxics (GET /proxies), by name."""
    return _request(f"{api}/proxies", "GET")
