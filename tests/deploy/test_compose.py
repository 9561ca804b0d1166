"""docker-compose.yml, kept correct without a Docker engine: valid against the Compose
Specification's schema (vendored: deploy/schemas/compose-spec.json), every file, service,
volume and config it names exists, and the pieces agree with each other and with retserve."""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import jsonschema
import yaml

from server.settings import Settings
from tests.deploy.files import DEPLOY, REPO, dockerfile, env_of

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
IMAGE_ENV = env_of(dockerfile(), dockerfile()[-1].stage)


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "",
                  value)


def test_valid_against_the_compose_specification():
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(COMPOSE))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_refuses_a_broken_file():
    """The check above can fail: a misspelt key is an error."""
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    broken = {**COMPOSE, "services": {**SERVICES, "redis": {**SERVICES["redis"],
                                                             "helthcheck": {}}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_every_file_config_volume_and_service_named_exists():
    for name, config in COMPOSE["configs"].items():
        assert (REPO / config["file"]).is_file(), f"config {name}: {config['file']} missing"
    declared_volumes = set(COMPOSE.get("volumes", {}))
    for name, service in SERVICES.items():
        build = service.get("build")
        if build:
            assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
        for config in service.get("configs", []):
            assert config["source"] in COMPOSE["configs"], f"{name}: config {config}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared_volumes, f"{name}: volume {source} not declared"


def test_retserve_settings_are_ones_retserve_serve_accepts():
    env = {k: interpolate(str(v)) for k, v in SERVICES["retserve"]["environment"].items()}
    settings = {k[len("RETSERVE_"):].lower(): v for k, v in env.items()}
    assert set(settings) <= set(Settings.model_fields), set(settings) - set(Settings.model_fields)
    Settings.model_validate(settings)


def test_retserve_waits_for_a_healthy_redis_it_stores_in():
    retserve, redis = SERVICES["retserve"], SERVICES["redis"]
    assert retserve["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis["healthcheck"]["test"]
    url = urlparse(retserve["environment"]["RETSERVE_STORE_URL"])
    assert url.scheme == "redis" and url.hostname == "redis" and url.port == 6379
    # stop: the drain finishes before Docker kills the container
    grace = int(retserve["stop_grace_period"].rstrip("s"))
    assert grace > float(retserve["environment"]["RETSERVE_DRAIN_TIMEOUT"])
    assert "ports" not in retserve, "replicas are reached through the proxy (and scale freely)"


def _redis_conf() -> dict[str, str]:
    lines = (DEPLOY / "compose" / "redis.conf").read_text().splitlines()
    pairs = [line.split(None, 1) for line in lines if line.strip() and not line.startswith("#")]
    return {k: v.strip() for k, v in pairs}


def _bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", size.lower()).groups()
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def test_redis_persists_on_a_volume_with_a_memory_bound_and_eviction_policy():
    conf, redis = _redis_conf(), SERVICES["redis"]
    assert conf["appendonly"] == "yes"
    mounts = dict(v.split(":")[::-1] for v in redis["volumes"])
    assert conf["dir"] in mounts and mounts[conf["dir"]] in COMPOSE["volumes"]
    # states and session pointers all carry an expiry: a volatile-* policy evicts only those
    assert conf["maxmemory-policy"].startswith("volatile-")
    assert _bytes(conf["maxmemory"]) < _bytes(redis["mem_limit"])
    conf_target = next(c["target"] for c in redis["configs"])
    assert conf_target in redis["command"]


def test_the_proxy_streams_unbuffered_to_every_retserve_replica():
    conf = (DEPLOY / "compose" / "nginx.conf").read_text()
    port = IMAGE_ENV["RETSERVE_PORT"]
    assert re.search(rf"server\s+retserve:{port}\s+resolve;", conf)  # re-resolved: scaling
    assert re.search(r"resolver\s+127\.0\.0\.11\b", conf)  # Docker's DNS
    assert re.search(r"proxy_buffering\s+off;", conf)
    timeout = int(re.search(r"proxy_read_timeout\s+(\d+)s;", conf).group(1))
    assert timeout > Settings.model_fields["request_timeout"].default
    listen = re.search(r"listen\s+(\d+);", conf).group(1)
    assert any(p.endswith(f":{listen}") for p in SERVICES["proxy"]["ports"])


def test_prometheus_scrapes_every_retserve_replica():
    conf = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in conf["scrape_configs"] if j["job_name"] == "retserve")
    sd = job["dns_sd_configs"][0]
    assert sd["names"] == ["retserve"] and sd["type"] == "A"
    assert str(sd["port"]) == IMAGE_ENV["RETSERVE_PORT"]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_grafana_gets_its_datasource_and_dashboard_provisioned():
    targets = {c["source"]: c["target"] for c in SERVICES["grafana"]["configs"]}
    assert {"grafana_datasource", "grafana_dashboards", "grafana_dashboard_retserve"} <= set(
        targets)
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/retserve.yml")
                              .read_text())["providers"][0]
    dashboard_target = targets["grafana_dashboard_retserve"]
    assert dashboard_target.startswith(provider["options"]["path"] + "/")
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
                                .read_text())["datasources"][0]
    assert urlparse(datasource["url"]).hostname == "prometheus"
    dashboard = json.loads((DEPLOY / "grafana/dashboards/retserve.json").read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
