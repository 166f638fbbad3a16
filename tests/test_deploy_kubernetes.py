"""deploy/kubernetes/: every manifest validates against current Kubernetes schemas (kubernetes-validate,
strict: unknown fields are errors), and the properties the grid relies on hold.

No Kubernetes cluster runs here (none can on this machine): these tests read the manifests. The pod's
command, environment and security context are run for real in the node image by
tests/docker/test_deploy_pod.py.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from jobgrid import config
from jobgrid.errors import ConfigError
from jobgrid.settings import NodeSettings, Timing

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
# a current release and the oldest one still maintained upstream when this was written
VERSIONS = (kubernetes_validate.latest_version(), "1.32")
# JOBGRID_* variables the manifests set that are not node settings (yet)
NOT_SETTINGS = {"JOBGRID_PEERS": "the start command's headless Service name"}


def docs(paths) -> list[dict]:
    out = []
    for p in paths:
        out += [d for d in yaml.safe_load_all(p.read_text()) if d]
    return out


def applied() -> dict[tuple[str, str], dict]:
    """What `kubectl apply -f deploy/kubernetes/` applies (top-level files, not secret/)."""
    return {(d["kind"], d["metadata"]["name"]): d for d in docs(sorted(K8S.glob("*.yaml")))}


def secrets() -> dict[str, dict]:
    """The example Secrets in secret/ (not applied with the directory), by name."""
    return {d["metadata"]["name"]: d for d in docs(sorted((K8S / "secret").glob("*.yaml")))}


def sts() -> dict:
    return applied()[("StatefulSet", "jobgrid")]


def pod() -> dict:
    return sts()["spec"]["template"]["spec"]


def node() -> dict:
    (c,) = pod()["containers"]
    return c


def env() -> dict[str, dict]:
    return {e["name"]: e for e in node()["env"]}


def test_the_applied_set_is_the_grid_and_nothing_else():
    assert set(applied()) == {("StatefulSet", "jobgrid"), ("Service", "jobgrid-peers"), ("Service", "jobgrid"),
                              ("PodDisruptionBudget", "jobgrid")}
    assert set(secrets()) == {"jobgrid-token", "jobgrid-peer-secret"}
    assert all(d["kind"] == "Secret" for d in secrets().values())


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version):
    all_docs = docs(sorted(K8S.rglob("*.yaml")))
    assert len(all_docs) == 6
    for d in all_docs:
        kubernetes_validate.validate(d, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would():
    bad = copy.deepcopy(sts())
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/healthz"}}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)
    bad = copy.deepcopy(sts())
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)


def test_stable_names_and_a_volume_claim_per_pod_on_the_data_dir():
    s = sts()["spec"]
    assert s["serviceName"] == "jobgrid-peers"
    (claim,) = s["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    mounts = {m["name"]: m["mountPath"] for m in node()["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env()["JOBGRID_DATA_DIR"]["value"]
    assert s["podManagementPolicy"] == "OrderedReady"
    assert s["updateStrategy"]["type"] == "RollingUpdate"


def test_services_select_the_pods_and_the_headless_one_lists_only_ready_pods():
    labels = sts()["spec"]["template"]["metadata"]["labels"]
    assert sts()["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = env()["JOBGRID_PORT"]["value"]
    (cport,) = node()["ports"]
    assert str(cport["containerPort"]) == port
    for name in ("jobgrid-peers", "jobgrid"):
        svc = applied()[("Service", name)]["spec"]
        assert svc["selector"].items() <= labels.items(), name
        (p,) = svc["ports"]
        assert p["targetPort"] == cport["name"] and str(p["port"]) == port
    peers = applied()[("Service", "jobgrid-peers")]["spec"]
    assert peers["clusterIP"] == "None"
    # joiners resolve this name: it must not list pods that have not joined yet (nor the joiner itself)
    assert peers.get("publishNotReadyAddresses", False) is False
    assert env()["JOBGRID_PEERS"]["value"] == "jobgrid-peers"
    assert applied()[("Service", "jobgrid")]["spec"].get("clusterIP") != "None"


def test_readiness_and_liveness_on_healthz():
    c = node()
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz", probe
        assert c[probe]["httpGet"]["port"] == c["ports"][0]["name"], probe
    start = c["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] > 60  # the node's join timeout


def test_the_token_and_peer_secret_are_mounted_files_never_environment_variables():
    c = node()
    for e in c.get("env", []):
        assert e["name"] not in ("JOBGRID_TOKEN", "JOBGRID_PEER_SECRET", "JOBGRID_READ_TOKEN"), e
        assert "secretKeyRef" not in e.get("valueFrom", {}), e
    assert "envFrom" not in c
    (vol,) = [v for v in pod()["volumes"] if "projected" in v]
    assert vol["projected"]["defaultMode"] & 0o007 == 0  # not world-readable
    mount = next(m for m in c["volumeMounts"] if m["name"] == vol["name"])
    assert mount["readOnly"] is True
    sources = {src["secret"]["name"]: src["secret"]["items"] for src in vol["projected"]["sources"]}
    for name, var in (("jobgrid-token", "JOBGRID_TOKEN_FILE"), ("jobgrid-peer-secret", "JOBGRID_PEER_SECRET_FILE")):
        (item,) = sources[name]
        assert item["key"] in secrets()[name]["stringData"]
        assert env()[var]["value"] == f"{mount['mountPath']}/{item['path']}"


def test_the_example_secrets_hold_placeholders_the_node_refuses():
    token = secrets()["jobgrid-token"]["stringData"]["token"]
    peer = secrets()["jobgrid-peer-secret"]["stringData"]["peer-secret"]
    good = "x" * 24
    with pytest.raises(ConfigError, match="cluster token must be at least 16 characters"):
        NodeSettings(port=8000, host="0.0.0.0", token=token, peer_secret=good)
    with pytest.raises(ConfigError, match="peer secret must be at least 16 characters"):
        NodeSettings(port=8000, host="0.0.0.0", token=good, peer_secret=peer)


def test_service_links_are_off_so_no_jobgrid_port_is_injected():
    # a Service named "jobgrid" would set JOBGRID_PORT=tcp://10.x.y.z:8000 in every pod of the namespace
    assert pod()["enableServiceLinks"] is False
    assert pod()["automountServiceAccountToken"] is False


def test_graceful_leave_hook_fits_in_the_grace_period():
    c = node()
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[:2] == ["jobgrid", "leave"]
    # the command is one the CLI takes, aimed at the pod's own node, with the full token the pod mounts
    from jobgrid.cli import build_parser
    args = build_parser().parse_args(cmd[1:])
    assert args.fn.__name__ == "cmd_leave" and args.host == "127.0.0.1"
    assert args.port in (None, int(env()["JOBGRID_PORT"]["value"]))
    assert env()["JOBGRID_TOKEN_FILE"]["value"]  # the full client token: a read-only one may not make a node leave
    leave_timeout = float(env()["JOBGRID_LEAVE_TIMEOUT"]["value"])
    assert pod()["terminationGracePeriodSeconds"] > leave_timeout
    assert Timing(leave_timeout=leave_timeout).leave_timeout == leave_timeout  # a real setting


def test_disruption_budget_keeps_a_copy_and_a_majority():
    pdb = applied()[("PodDisruptionBudget", "jobgrid")]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= sts()["spec"]["template"]["metadata"]["labels"].items()
    copies = int(env()["JOBGRID_REPLICAS"]["value"])
    pods = sts()["spec"]["replicas"]
    assert pdb["maxUnavailable"] < copies  # every job keeps a live copy
    assert 2 * (pods - pdb["maxUnavailable"]) > pods  # the ring keeps its quorum


def test_resource_requests_and_runners_match():
    res = node()["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"]
    assert "cpu" not in res.get("limits", {})  # throttling would delay heartbeats into false failures
    assert int(env()["JOBGRID_RUNNERS"]["value"]) <= int(res["requests"]["cpu"])


def test_non_root_read_only_no_capabilities():
    psc, csc = pod()["securityContext"], node()["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0 and psc["runAsGroup"] > 0
    assert psc["fsGroup"] == psc["runAsGroup"]
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"]
    # with a read-only root, every place the node writes is a volume: its data dir and /tmp
    mounts = {m["mountPath"] for m in node()["volumeMounts"] if not m.get("readOnly")}
    assert mounts == {env()["JOBGRID_DATA_DIR"]["value"], "/tmp"}


def test_every_jobgrid_variable_is_a_setting_the_node_reads():
    known = set(config.KEYS.values())
    for name in env():
        if name.startswith("JOBGRID_"):
            assert name in known or name in NOT_SETTINGS, f"{name}: not a node setting (typo?)"
    assert env()["JOBGRID_ADVERTISE"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env()["JOBGRID_HOST"]["value"] == "0.0.0.0"


# ---- the start command: which pod starts the grid and which joins ------------------------------------
def run_start(tmp_path: Path, hostname: str, peers: str) -> str:
    """Run the StatefulSet's start command with /bin/sh, `jobgrid` replaced by a stub that prints JOBGRID_JOIN
    (the node itself runs it in tests/docker/test_deploy_pod.py); getent is the real one."""
    stub = tmp_path / "bin" / "jobgrid"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text('#!/bin/sh\necho "args=$* join=${JOBGRID_JOIN:-none}"\n')
    stub.chmod(0o755)
    script = node()["command"]
    assert script[:2] == ["/bin/sh", "-c"]
    run_env = {"PATH": f"{stub.parent}:{os.environ['PATH']}", "HOSTNAME": hostname, "JOBGRID_PEERS": peers,
               "JOBGRID_PORT": env()["JOBGRID_PORT"]["value"]}
    r = subprocess.run(script, env=run_env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_pod_zero_starts_the_grid_when_no_member_is_ready(tmp_path):
    assert run_start(tmp_path, "jobgrid-0", "no-such-service.invalid") == "args=server join=none"


def test_pod_zero_joins_when_a_member_is_live(tmp_path):
    # the headless name resolves once some pod is ready: "localhost" stands for such a name here
    assert run_start(tmp_path, "jobgrid-0", "localhost") == "args=server join=localhost:8000"


@pytest.mark.parametrize("hostname", ["jobgrid-1", "jobgrid-10", "jobgrid-20"])
def test_every_other_pod_joins_through_the_headless_service(tmp_path, hostname):
    assert run_start(tmp_path, hostname, "jobgrid-peers") == "args=server join=jobgrid-peers:8000"
