"""No Docker engine runs here: check that docker-compose.yml is consistent with the repo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_every_expected_service_is_there():
    assert {"kafka", "elasticsearch", "kibana", "prometheus", "alertmanager", "grafana", "worker", "train"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_is_buildable_or_pulled_and_mounts_exist(name):
    service = SERVICES[name]
    assert ("image" in service) != ("build" in service), f"{name}: needs exactly one of image/build"
    if "build" in service:
        context = ROOT / service["build"]["context"]
        dockerfile = context / service["build"]["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (context / source).exists(), f"{dockerfile}: COPY source {source} missing"
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{name}: mounted {source} does not exist"
        elif not source.startswith(("$", "/", "..")):
            assert source in COMPOSE["volumes"], f"{name}: named volume {source} not declared"


def test_dependencies_wait_for_health_checks():
    for name, service in SERVICES.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in SERVICES[dependency], f"{dependency} has no healthcheck for {name}"


def test_host_ports_are_unique():
    ports = [p.split(":")[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(ports) == len(set(ports)), ports


def test_finsent_environment_names_real_settings():
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "train"):
        for key in SERVICES[name]["environment"]:
            assert key in fields, f"{name}: {key} is not a finsent setting"


def test_prometheus_targets_are_compose_services():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for s in job.get("static_configs", []) for t in s["targets"]]
    targets += [t for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for t in s["targets"]]
    for target in targets:
        host, port = target.split(":")
        assert host in SERVICES, f"Prometheus scrapes {target}, not a compose service"
        container_ports = {p.split(":")[-1] for p in SERVICES[host].get("ports", [])}
        assert port in container_ports, f"{target}: {host} does not publish port {port}"


def test_grafana_datasources_point_at_compose_services():
    text = (ROOT / "deploy/grafana/provisioning/datasources/finsent.yml").read_text()
    for host in re.findall(r"url: http://([a-z-]+):", text):
        assert host in SERVICES
