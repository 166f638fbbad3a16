"""Every link of a cluster through its own Toxiproxy proxy, and the toxics on them.

A *link* is directed: ``("n1", "n2")`` carries the connections n1 opens to n2 (its requests travel
*upstream*, the answers *downstream*); ``("client", "n2")`` carries the harness's clients' connections
to n2. Each node is started with a dial map (``--dial``, see docs/configuration.md) that sends its
connections to a peer's advertised address to that link's proxy instead, so the ring keeps the real
addresses while every byte between two nodes passes a proxy a fault can slow, cut or reset.

Driven with `toxiproxy-python`; server-side populate and toxic updates go through
harness/toxiproxy_rest.py, which that client lacks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from . import toxiproxy_rest as rest
from .errors import HarnessError

CLIENT = "client"
Link = tuple[str, str]
_API_LOCK = threading.Lock()  # toxiproxy-python keeps its server's address in class attributes


@contextmanager
def _client(api: str) -> Iterator[Any]:
    from toxiproxy.api import APIConsumer  # noqa: PLC0415
    from toxiproxy.server import Toxiproxy  # noqa: PLC0415
    u = urlsplit(api)
    with _API_LOCK:
        APIConsumer.host, APIConsumer.port = u.hostname, u.port
        try:
            yield Toxiproxy()
        except HarnessError:
            raise
        except Exception as e:  # noqa: BLE001 - requests' and the client's own errors
            raise HarnessError(f"Toxiproxy at {api}: {type(e).__name__}: {e}") from None


def data_streams(link: Link, node: str | None, direction: str) -> list[str]:
    """The Toxiproxy streams of `link` that carry `node`'s data in `direction` ("in", "out", "both").

    Data a node sends leaves upstream on the links it opened and downstream on the links opened to it.
    Without a node (a link named by its two ends) "out" is the link's own requests (upstream).
    """
    if direction == "both":
        return ["upstream", "downstream"]
    if direction not in ("in", "out"):
        raise HarnessError(f"direction must be in, out or both, not {direction!r}")
    opened_by_node = node is None or link[0] == node
    sends_upstream = opened_by_node == (direction == "out")
    return ["upstream" if sends_upstream else "downstream"]


class ProxyNet:
    """The proxies of one cluster on one Toxiproxy server.

    `api`: the server's REST address as the harness reaches it; `bind`: the host the proxies listen on
    inside the server; `reach`: the host nodes and clients use to reach them; `ports`: one per link.
    """

    def __init__(self, api: str, *, prefix: str, bind: str, reach: str) -> None:
        self.api = api.rstrip("/")
        self.prefix = prefix
        self.bind, self.reach = bind, reach
        self.ports: dict[Link, int] = {}
        self.upstreams: dict[str, str] = {}   # node name -> "host:port" it listens on
        self.toxic_count = 0

    # ---- topology --------------------------------------------------------------------------------------
    def name(self, link: Link) -> str:
        return f"{self.prefix}_{link[0]}_{link[1]}"

    def setup(self, nodes: Sequence[Any], ports: Iterable[int]) -> None:
        """One proxy per directed node-to-node link and one per client-to-node link, in one populate call."""
        self.upstreams = {n.name: f"{n.host}:{n.port}" for n in nodes}
        names = list(self.upstreams)
        links = [(a, b) for a in names for b in names if a != b] + [(CLIENT, b) for b in names]
        port_iter = iter(ports)
        self.ports = {link: next(port_iter) for link in links}
        rest.populate(self.api, [{"name": self.name(link), "listen": f"{self.bind}:{port}",
                                  "upstream": self.upstreams[link[1]], "enabled": True}
                                 for link, port in self.ports.items()])

    def links(self) -> list[Link]:
        return list(self.ports)

    def address(self, link: Link) -> str:
        return f"{self.reach}:{self.ports[link]}"

    def dial_map(self, node: Any) -> str:
        """The node's --dial value: every peer's advertised address -> the proxy of the link to it."""
        return ",".join(f"{self.upstreams[b]}={self.address((a, b))}" for (a, b) in self.ports
                        if a == node.name)

    def client_url(self, node: Any, scheme: str = "http") -> str:
        return f"{scheme}://{self.address((CLIENT, node.name))}"

    def node_links(self, node: str, *, clients: bool = True) -> list[Link]:
        """Every link that starts or ends at `node` (client links to it too, unless clients=False)."""
        return [lk for lk in self.ports if node in lk and (clients or CLIENT not in lk)]

    def between(self, a: str, b: str) -> list[Link]:
        return [lk for lk in ((a, b), (b, a)) if lk in self.ports]

    # ---- toxics and enabling -------------------------------------------------------------------------
    def add_toxic(self, link: Link, kind: str, attributes: dict, *, stream: str, name: str,
                  toxicity: float = 1.0) -> None:
        with _client(self.api) as tp:
            proxy = tp.get_proxy(self.name(link))
            if proxy is None:
                raise HarnessError(f"no proxy {self.name(link)} on {self.api}")
            proxy.add_toxic(type=kind, stream=stream, name=name, toxicity=toxicity, attributes=attributes)
        self.toxic_count += 1

    def remove_toxic(self, link: Link, name: str) -> None:
        from toxiproxy.exceptions import NotFound  # noqa: PLC0415
        with _client(self.api) as tp:
            proxy = tp.get_proxy(self.name(link))
            try:
                if proxy is not None:
                    proxy.destroy_toxic(name)
            except NotFound:
                pass

    def update_toxic(self, link: Link, name: str, attributes: dict) -> None:
        rest.update_toxic(self.api, self.name(link), name, attributes)

    def set_enabled(self, link: Link, enabled: bool) -> None:
        """A disabled proxy closes its connections and stops listening: new ones are refused."""
        with _client(self.api) as tp:
            proxy = tp.get_proxy(self.name(link))
            if proxy is not None:
                proxy.enable() if enabled else proxy.disable()

    def active(self) -> list[dict]:
        """Every toxic and disabled proxy of this cluster: [{link, toxic, type, stream, attributes}]."""
        out = []
        for name, p in sorted(rest.proxies(self.api).items()):
            if not name.startswith(self.prefix + "_"):
                continue
            src, dst = name[len(self.prefix) + 1:].split("_", 1)
            if not p.get("enabled", True):
                out.append({"link": f"{src}->{dst}", "toxic": "(proxy disabled)", "type": "down",
                            "stream": "both", "attributes": {}})
            for t in p.get("toxics") or []:
                out.append({"link": f"{src}->{dst}", "toxic": t["name"], "type": t["type"],
                            "stream": t["stream"], "attributes": t.get("attributes", {})})
        return out

    def clear(self) -> None:
        """Remove every toxic and enable every proxy of this cluster (the other proxies are not touched)."""
        for item in self.active():
            src, dst = item["link"].split("->")
            if item["type"] == "down":
                self.set_enabled((src, dst), True)
            else:
                self.remove_toxic((src, dst), item["toxic"])

    def destroy(self) -> None:
        """Delete every proxy of this cluster from the server. Safe twice."""
        from toxiproxy.exceptions import NotFound  # noqa: PLC0415
        with _client(self.api) as tp:
            for name, proxy in tp.proxies().items():
                if name.startswith(self.prefix + "_"):
                    try:
                        proxy.destroy()
                    except NotFound:
                        pass
        self.ports = {}
