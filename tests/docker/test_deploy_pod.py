"""The Kubernetes StatefulSet's container and the Swarm stack's service, run for real in the node image
with plain Docker.

No Kubernetes or swarm runs here; what this checks is what the manifests ask of the image: its start command
(pod 0 starts the grid, others join through the headless Service's name), its environment (the pod IP as
JOBGRID_ADVERTISE, the token read from a mounted file) and its security context (uid/gid 999, read-only
root file system with /tmp and the data volume writable, every capability dropped, no new privileges).
Three "pods" on an internal network: jobgrid-0, jobgrid-1 joining through the name `jobgrid-peers`
(resolving to jobgrid-0, as the headless Service would to the ready pods), and a second jobgrid-0 with an
empty volume that must join the live grid rather than start a second one. Then a job runs. The Swarm
service likewise: slot 1 starts, slot 2 joins through tasks.<service>, each advertising the address its
start script finds for its own host name, with the token as a secret file and the stack's health check.
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
STACK = ROOT / "deploy" / "swarm" / "jobgrid-stack.yml"


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


class Lab:
    """An internal network with a subnet of our own (so addresses are known before a container starts), and
    every container and volume made on it; all removed at teardown."""

    def __init__(self, docker) -> None:
        import docker as docker_sdk
        self.sdk = docker_sdk
        self.docker = docker
        self.label = {"jobgrid.test": f"deploy-{os.getpid()}-{secrets.token_hex(3)}"}
        self.containers: list = []
        self.volumes: list = []
        self.net = None
        for _ in range(20):
            subnet = ipaddress.ip_network(f"172.{random.randint(20, 31)}.{random.randint(0, 255)}.0/24")
            try:
                self.net = docker.networks.create(
                    f"jgdeploy{secrets.token_hex(4)}", driver="bridge", internal=True, labels=self.label,
                    ipam=docker_sdk.types.IPAMConfig(pool_configs=[docker_sdk.types.IPAMPool(subnet=str(subnet))]))
                break
            except docker_sdk.errors.APIError:
                continue
        assert self.net is not None, "could not create an internal network"
        self.ips = [str(h) for h in list(subnet.hosts())[9:20]]

    def run(self, image: str, ip: str, *, data: str, binds: dict, entrypoint: list[str], command: list[str],
            environment: dict[str, str], user: str, hostname: str | None = None, group_add: list[str] | None = None,
            extra_hosts: dict[str, str] | None = None):
        """A container on the internal network only (no default bridge), hardened as the manifests ask."""
        vol = self.docker.volumes.create(labels=self.label)
        self.volumes.append(vol)
        api = self.docker.api
        host_config = api.create_host_config(
            network_mode=self.net.name, binds={vol.name: {"bind": data, "mode": "rw"}, **binds},
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"], tmpfs={"/tmp": ""},
            extra_hosts=extra_hosts or {}, group_add=group_add or None,
            # this sandbox's upstream DNS never answers, so a name that does not resolve (the point of the
            # first pod/slot) would take 20 s to fail; a cluster's DNS says NXDOMAIN at once
            dns_opt=["timeout:1", "attempts:1"])
        net_config = api.create_networking_config({self.net.name: api.create_endpoint_config(ipv4_address=ip)})
        created = api.create_container(image, entrypoint=entrypoint, command=command, hostname=hostname,
                                       environment=environment, user=user, labels=self.label,
                                       host_config=host_config, networking_config=net_config)
        ctr = self.docker.containers.get(created["Id"])
        self.containers.append(ctr)
        ctr.start()
        ctr.reload()
        assert list(ctr.attrs["NetworkSettings"]["Networks"]) == [self.net.name]  # internal network only
        return ctr

    def logs(self) -> str:
        return "\n".join(f"--- {x.name}\n" + x.logs(tail=15).decode(errors="replace") for x in self.containers)

    def close(self) -> list:
        for ctr in self.containers:
            try:
                ctr.remove(force=True)
            except self.sdk.errors.APIError:
                pass
        self.net.remove()
        for vol in self.volumes:
            vol.remove(force=True)
        return self.docker.containers.list(all=True, filters={"label": f"jobgrid.test={self.label['jobgrid.test']}"})


@pytest.fixture
def lab(docker):
    lab = Lab(docker)
    yield lab
    assert not lab.close(), "containers left behind"


def ring(ip: str, token: str) -> set[str]:
    sl = _get(f"http://{ip}:8000/servers", token)
    return {s["ip"] for s in sl["servers"]}


def run_jobs(ip: str, token: str) -> None:
    with Client(f"http://{ip}:8000", token=token, timeout=60) as client:
        futs = [client.submit(examples.add, i, 100) for i in range(6)]
        assert [f.result(timeout=90) for f in futs] == [100 + i for i in range(6)]


def assert_hardened(ctr, uid: int, token: str, peer: str) -> None:
    assert ctr.exec_run("id -u").output.decode().strip() == str(uid)
    denied = ctr.exec_run(["sh", "-c", "touch /opt/x"])
    assert denied.exit_code != 0 and b"Read-only file system" in denied.output
    # the token is in no process environment of the node (it reads the file)
    env_dump = ctr.exec_run(["sh", "-c", "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'"]).output
    assert b"JOBGRID_TOKEN_FILE" in env_dump
    assert token.encode() not in env_dump and peer.encode() not in env_dump


def test_statefulset_container_runs_in_the_node_image(lab, node_image, tmp_path):
    pod = yaml.safe_load(STS.read_text())["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    psc, csc = pod["securityContext"], c["securityContext"]
    assert csc["readOnlyRootFilesystem"] and csc["capabilities"]["drop"] == ["ALL"]
    token, peer = secrets.token_hex(24), secrets.token_hex(24)

    # the projected Secret volume as the kubelet makes it: root-owned, group = fsGroup, mode defaultMode
    sec_dir = tmp_path / "secrets"
    sec_dir.mkdir()
    vol = next(v for v in pod["volumes"] if "projected" in v)
    values = {"jobgrid-token": token, "jobgrid-peer-secret": peer}
    os.chown(sec_dir, 0, psc["fsGroup"])
    sec_dir.chmod(0o750)
    for src in vol["projected"]["sources"]:
        (item,) = src["secret"]["items"]
        f = sec_dir / item["path"]
        f.write_text(values[src["secret"]["name"]])
        os.chown(f, 0, psc["fsGroup"])
        f.chmod(vol["projected"]["defaultMode"])
    token_mount = next(m for m in c["volumeMounts"] if m["name"] == vol["name"])["mountPath"]
    data = next(m for m in c["volumeMounts"] if m["name"] == "data")["mountPath"]

    def run_pod(hostname: str, ip: str, extra_hosts: dict[str, str] | None = None):
        env = {}
        for e in c["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                assert e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
                env[e["name"]] = ip
        return lab.run(node_image, ip, entrypoint=c["command"], command=[], hostname=hostname, environment=env,
                       user=f"{psc['runAsUser']}:{psc['runAsGroup']}", group_add=[str(psc["fsGroup"])],
                       data=data, binds={str(sec_dir): {"bind": token_mount, "mode": "ro"}},
                       extra_hosts=extra_hosts)

    ip0, ip1, ip2 = lab.ips[:3]
    p0 = run_pod("jobgrid-0", ip0)
    _wait(lambda: _get(f"http://{ip0}:8000/healthz").get("ok"), 60, "pod 0 to start the grid", lab.logs)
    run_pod("jobgrid-1", ip1, {"jobgrid-peers": ip0})
    _wait(lambda: ring(ip1, token) == ring(ip0, token) == {ip0, ip1}, 60, "pod 1 to join through jobgrid-peers",
          lab.logs)
    # pod 0 again, with an empty volume, while the grid lives on: it must join, not start a new grid
    run_pod("jobgrid-0", ip2, {"jobgrid-peers": ip1})
    _wait(lambda: ring(ip0, token) == ring(ip1, token) == ring(ip2, token) == {ip0, ip1, ip2}, 60,
          "a fresh pod 0 to join the live grid", lab.logs)
    assert_hardened(p0, psc["runAsUser"], token, peer)
    run_jobs(ip1, token)


def test_swarm_service_runs_in_the_node_image(lab, node_image, tmp_path):
    svc = yaml.safe_load(STACK.read_text())["services"]["node"]
    unesc = lambda x: x.replace("$$", "$")  # noqa: E731 - compose's `$$`, as docker stack deploy renders it
    token, peer = secrets.token_hex(24), secrets.token_hex(24)
    values = {"jobgrid_token": token, "jobgrid_peer_secret": peer}
    binds = {}
    for sec in svc["secrets"]:  # Docker secrets as Swarm mounts them: /run/secrets/<target>, uid/gid/mode
        f = tmp_path / sec["target"]
        f.write_text(values[sec["source"]])
        os.chown(f, int(sec["uid"]), int(sec["gid"]))
        f.chmod(sec["mode"])
        binds[str(f)] = {"bind": f"/run/secrets/{sec['target']}", "mode": "ro"}
    data = next(m["target"] for m in svc["volumes"] if m["type"] == "volume")
    assert {m["target"] for m in svc["volumes"] if m["type"] == "tmpfs"} == {"/tmp"}
    assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]

    def run_task(slot: int, ip: str, extra_hosts: dict[str, str] | None = None):
        env = {k: str(v) for k, v in svc["environment"].items()}
        env.update(JOBGRID_SERVICE="jobgrid_node", JOBGRID_SLOT=str(slot))  # what Swarm's templates give
        return lab.run(node_image, ip, entrypoint=svc["entrypoint"], command=[unesc(x) for x in svc["command"]],
                       environment=env, user=svc["user"], data=data, extra_hosts=extra_hosts,
                       binds=binds)

    ip1, ip2 = lab.ips[:2]
    t1 = run_task(1, ip1)
    _wait(lambda: _get(f"http://{ip1}:8000/healthz").get("ok"), 60, "slot 1 to start the grid", lab.logs)
    # the stack's health check passes on a member
    hc = svc["healthcheck"]["test"]
    assert hc[0] == "CMD" and t1.exec_run(hc[1:]).exit_code == 0
    t2 = run_task(2, ip2, {"tasks.jobgrid_node": ip1})
    _wait(lambda: ring(ip1, token) == ring(ip2, token) == {ip1, ip2}, 60, "slot 2 to join through tasks.<service>",
          lab.logs)
    assert t2.exec_run(hc[1:]).exit_code == 0
    assert_hardened(t2, int(svc["user"].split(":")[0]), token, peer)
    run_jobs(ip2, token)
