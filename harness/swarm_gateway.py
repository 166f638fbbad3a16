"""The host's way into a swarm stack's overlay network (the host cannot join an overlay network itself).

A container of the node image, run as root with NET_ADMIN, on the overlay network and on an internal bridge
of its own (no route out): it forwards and masquerades packets from the host to the overlay's subnet (the
host routes that subnet through it), and it listens on its own port 8000, forwarding each connection to a
live task found as ``tasks.<service>`` (looked up per connection), so clients have one address that
outlives every task: Swarm gives each new task a new address, and a rolling update replaces them all.
"""

from __future__ import annotations

from typing import Any

from .errors import HarnessError

# the per-connection forwarder, run in the gateway with the image's Python
FORWARDER = r"""
import asyncio, random, socket, sys
NAME, PORT = sys.argv[1], int(sys.argv[2])

async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()

async def handle(cr, cw):
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(NAME, PORT, type=socket.SOCK_STREAM)
        addrs = list({i[4][0] for i in infos})
    except OSError:
        addrs = []
    random.shuffle(addrs)
    for a in addrs:
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(a, PORT), 2)
            break
        except (OSError, asyncio.TimeoutError):
            continue
    else:
        cw.close()
        return
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw))

async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", PORT)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def start_gateway(client: Any, *, name: str, network: Any, image: str, labels: dict, service: str,
                  port: int) -> str:
    """Start the gateway `name` on `network` (the stack's overlay) and a bridge of its own; returns its
    address on that bridge (the route's next hop, and the clients' entry)."""
    from docker.types import IPAMConfig, IPAMPool  # noqa: PLC0415

    from .docker_backend import _subnet_for  # noqa: PLC0415
    if not client.networks.list(names=[name]):
        client.networks.create(name, driver="bridge", internal=True, labels=labels,
                               ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=_subnet_for(client, name))]))
    ip = client.networks.get(name).attrs["IPAM"]["Config"][0]["Subnet"].rsplit(".", 1)[0] + ".2"
    api = client.api
    ct = api.create_container(
        image, entrypoint=["python3", "-c", FORWARDER, f"tasks.{service}", str(port)], user="root", name=name,
        labels=labels, healthcheck={"test": ["NONE"]},  # not a node: the image's /healthz check does not apply
        host_config=api.create_host_config(network_mode=name, cap_add=["NET_ADMIN"],
                                           sysctls={"net.ipv4.ip_forward": "1"}),
        networking_config=api.create_networking_config({name: api.create_endpoint_config(ipv4_address=ip)}))
    api.start(ct["Id"])
    network.connect(name)
    ct = client.containers.get(name)
    ct.reload()
    overlay_ip = ct.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
    code, out = ct.exec_run(["sh", "-c", f"ip -o -4 addr show | awk '/ {overlay_ip}\\// {{print $2}}'"])
    dev = out.decode().strip()
    if code != 0 or not dev:
        raise HarnessError(f"gateway: no interface with {overlay_ip}: {out.decode(errors='replace')}")
    code, out = ct.exec_run(["iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-o", dev, "-j", "MASQUERADE"])
    if code != 0:
        raise HarnessError(f"gateway: iptables failed: {out.decode(errors='replace')}")
    return ip
