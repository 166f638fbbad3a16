"""The Kubernetes StatefulSet's container, run for real in the node image with plain Docker.

No Kubernetes runs here; what this checks is what the manifest asks of the image: its start command
(pod 0 starts the grid, others join through the headless Service's name), its environment (the pod IP as
JOBGRID_ADVERTISE, the token read from a mounted file) and its security context (uid/gid 999, read-only
root file system with /tmp and the data volume writable, every capability dropped, no new privileges).
Three "pods" on an internal network: jobgrid-0, jobgrid-1 joining through the name `jobgrid-peers`
(resolving to jobgrid-0, as the headless Service would to the ready pods), and a second jobgrid-0 with an
empty volume that must join the live grid rather than start a second one. Then a job runs.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import time
import urllib.request
import json
from pathlib import Path

import pytest
import yaml

from jobgrid import Client, examples

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
STS = ROOT / "deploy" / "kubernetes" / "statefulset.yaml"


def _get(url: str, token: str | None = None, timeout: float = 3.0) -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _wait(cond, timeout: float, what: str, logs) -> object:
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = cond()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {last!r})\n{logs()}")


def test_statefulset_container_runs_in_the_node_image(docker, node_image, tmp_path):
    import docker as docker_sdk

    pod = yaml.safe_load(STS.read_text())["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    psc, csc = pod["securityContext"], c["securityContext"]
    assert csc["readOnlyRootFilesystem"] and csc["capabilities"]["drop"] == ["ALL"]
    token = secrets.token_hex(24)
    label = {"jobgrid.test": f"deploy-pod-{os.getpid()}-{secrets.token_hex(3)}"}

    # the Secret volume as the kubelet makes it: root-owned, group = fsGroup, mode defaultMode
    sec_dir = tmp_path / "secret"
    sec_dir.mkdir()
    (item,) = next(v for v in pod["volumes"] if "secret" in v)["secret"]["items"]
    (sec_dir / item["path"]).write_text(token)
    mode = next(v for v in pod["volumes"] if "secret" in v)["secret"]["defaultMode"]
    for p, m in ((sec_dir, 0o750), (sec_dir / item["path"], mode)):
        os.chown(p, 0, psc["fsGroup"])
        p.chmod(m)
    token_mount = next(m for m in c["volumeMounts"] if m["name"] == "token")["mountPath"]

    made: dict[str, list] = {"containers": [], "volumes": []}
    net = None
    for _ in range(20):  # an internal network with a subnet of our own, so pod IPs are known before start
        subnet = ipaddress.ip_network(f"172.{random.randint(20, 31)}.{random.randint(0, 255)}.0/24")
        try:
            net = docker.networks.create(
                f"jgpod{secrets.token_hex(4)}", driver="bridge", internal=True, labels=label,
                ipam=docker_sdk.types.IPAMConfig(pool_configs=[docker_sdk.types.IPAMPool(subnet=str(subnet))]))
            break
        except docker_sdk.errors.APIError:
            continue
    assert net is not None, "could not create an internal network"
    hosts = list(subnet.hosts())

    def run_pod(hostname: str, ip: str, extra_hosts: dict[str, str] | None = None):
        vol = docker.volumes.create(labels=label)
        made["volumes"].append(vol)
        env = {}
        for e in c["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                assert e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
                env[e["name"]] = ip
        data = next(m for m in c["volumeMounts"] if m["name"] == "data")["mountPath"]
        ctr = docker.containers.create(
            node_image, entrypoint=c["command"], command=[], hostname=hostname, environment=env,
            user=f"{psc['runAsUser']}:{psc['runAsGroup']}", group_add=[str(psc["fsGroup"])],
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"], tmpfs={"/tmp": ""},
            volumes={vol.name: {"bind": data, "mode": "rw"}, str(sec_dir): {"bind": token_mount, "mode": "ro"}},
            extra_hosts=extra_hosts or {}, labels=label, network=None, detach=True)
        made["containers"].append(ctr)
        net.connect(ctr, ipv4_address=ip)
        ctr.start()
        return ctr

    def logs() -> str:
        return "\n".join(f"--- {x.name}\n" + x.logs(tail=15).decode(errors="replace") for x in made["containers"])

    def ring(ip: str) -> set[str]:
        sl = _get(f"http://{ip}:8000/servers", token)
        return {s["ip"] for s in sl["servers"]}

    try:
        ip0, ip1, ip2 = (str(h) for h in hosts[9:12])
        p0 = run_pod("jobgrid-0", ip0)
        _wait(lambda: _get(f"http://{ip0}:8000/healthz").get("ok"), 60, "pod 0 to start the grid", logs)
        run_pod("jobgrid-1", ip1, {"jobgrid-peers": ip0})
        _wait(lambda: ring(ip1) == ring(ip0) == {ip0, ip1}, 60, "pod 1 to join through jobgrid-peers", logs)
        # pod 0 again, with an empty volume, while the grid lives on: it must join, not start a new grid
        run_pod("jobgrid-0", ip2, {"jobgrid-peers": ip1})
        _wait(lambda: ring(ip0) == ring(ip1) == ring(ip2) == {ip0, ip1, ip2}, 60,
              "a fresh pod 0 to join the live grid", logs)

        assert p0.exec_run("id -u").output.decode().strip() == str(psc["runAsUser"])
        denied = p0.exec_run(["sh", "-c", "touch /opt/x"])
        assert denied.exit_code != 0 and b"Read-only file system" in denied.output
        with Client(f"http://{ip1}:8000", token=token, timeout=60) as client:
            futs = [client.submit(examples.add, i, 100) for i in range(6)]
            assert [f.result(timeout=90) for f in futs] == [100 + i for i in range(6)]
        # the token is in no process environment of the node (it reads the file)
        env_dump = p0.exec_run(["sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'"]).output
        assert token.encode() not in env_dump
    finally:
        for ctr in made["containers"]:
            try:
                ctr.remove(force=True)
            except docker_sdk.errors.APIError:
                pass
        net.remove()
        for vol in made["volumes"]:
            vol.remove(force=True)
    left = docker.containers.list(all=True, filters={"label": f"jobgrid.test={label['jobgrid.test']}"})
    assert not left, left
