"""No Docker engine runs here: check that docker-compose.yml and its shared-host overlay are
consistent with the repo and safe: loopback-only by default, secured on a shared host."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


class _ComposeLoader(yaml.SafeLoader):
    """Reads Compose's merge tags: ``!reset X`` empties a value, ``!override X`` replaces it."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: ("reset", loader.construct_sequence(node)))
_ComposeLoader.add_constructor("!override", lambda loader, node: ("override", loader.construct_sequence(node)))


def _load(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)


def _merge(base: dict, overlay: dict) -> dict:
    """Docker Compose's merge of a second -f file: mappings merge, ports and volumes append unless
    the overlay resets or overrides them."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, tuple):
            merged[key] = [] if value[0] == "reset" else value[1]
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list):
            merged[key] = base[key] + [v for v in value if v not in base[key]]
        else:
            merged[key] = value
    return merged


COMPOSE = _load("docker-compose.yml")
SERVICES = COMPOSE["services"]
SHARED = _merge(COMPOSE, _load("docker-compose.shared-host.yml"))
SHARED_SERVICES = SHARED["services"]


def test_every_expected_service_is_there():
    assert {"kafka", "elasticsearch", "kibana", "prometheus", "alertmanager", "grafana", "worker", "train"} <= set(
        SERVICES
    )


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
    for volume in service.get("volumes", []) + SHARED_SERVICES[name].get("volumes", []):
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
    for services in (SERVICES, SHARED_SERVICES):
        ports = [p.rsplit(":", 1)[0] for s in services.values() for p in s.get("ports", [])]
        assert len(ports) == len(set(ports)), ports


def test_finsent_environment_names_real_settings():
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    for services in (SERVICES, SHARED_SERVICES):
        for name in ("worker", "train"):
            for key in services[name]["environment"]:
                assert key in fields, f"{name}: {key} is not a finsent setting"


def test_default_stack_publishes_every_port_on_loopback_only():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    assert not any("--web.enable-lifecycle" in arg for arg in SERVICES["prometheus"]["command"])


def test_shared_host_publishes_only_secured_services():
    published = {name for name, service in SHARED_SERVICES.items() if service.get("ports")}
    assert published == {"kafka", "elasticsearch", "kibana", "grafana"}
    kafka = SHARED_SERVICES["kafka"]["environment"]
    protocols = dict(pair.split(":") for pair in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for listener in kafka["KAFKA_LISTENERS"].split(","):
        name, port = listener.split("://")
        if name != "CONTROLLER":
            assert protocols[name] == "SASL_SSL", f"Kafka listener {name} is {protocols[name]}"
        else:
            assert not any(port in p for p in SHARED_SERVICES["kafka"]["ports"]), "controller port published"
    es = SHARED_SERVICES["elasticsearch"]["environment"]
    assert es["xpack.security.enabled"] == "true" and es["xpack.security.http.ssl.enabled"] == "true"
    grafana = SHARED_SERVICES["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and "${" in grafana["GF_SECURITY_ADMIN_PASSWORD"]
    worker = SHARED_SERVICES["worker"]["environment"]
    assert worker["FINSENT_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert worker["FINSENT_ES_HOSTS"].startswith("https://")
    for secret in ("FINSENT_KAFKA_SASL_PASSWORD", "FINSENT_ES_PASSWORD"):
        assert worker[secret].startswith("${") and ":?" in worker[secret], f"{secret} must be required"


def test_prometheus_targets_are_compose_services():
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for s in job.get("static_configs", []) for t in s["targets"]]
    targets += [t for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for t in s["targets"]]
    targets += [
        f"{n}:{d['port']}"
        for job in config["scrape_configs"]
        for d in job.get("dns_sd_configs", [])
        for n in d["names"]
    ]
    for target in targets:
        host, port = target.split(":")
        assert host in SERVICES, f"Prometheus scrapes {target}, not a compose service"
        for services in (SERVICES, SHARED_SERVICES):
            container_ports = {p.split(":")[-1] for p in services[host].get("ports", [])} | set(
                services[host].get("expose", [])
            )
            assert port in container_ports, f"{target}: {host} does not expose port {port}"


def test_grafana_datasources_point_at_compose_services():
    text = (ROOT / "deploy/grafana/provisioning/datasources/finsent.yml").read_text()
    for host in re.findall(r"url: http://([a-z-]+):", text):
        assert host in SERVICES


def test_the_image_runs_as_the_charts_non_root_user_with_writable_state_and_model_paths():
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    chart = yaml.safe_load((ROOT / "deploy/helm/finsent/values.yaml").read_text())
    uid = chart["podSecurityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{uid}$", dockerfile, re.M)
    assert "chown finsent:finsent /state /models" in dockerfile and f"--uid {uid}" in dockerfile
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"
    # The alert rules the image points at are inside it.
    rules = re.search(r"FINSENT_ALERT_RULES=/app/(\S+)", dockerfile).group(1)
    assert (ROOT / rules).is_file() and rules.startswith("deploy/")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and "tests" in ignored


def test_workers_scale_without_colliding_on_a_host_port_or_a_state_volume():
    worker = _load("docker-compose.yml")["services"]["worker"]
    assert worker["ports"] == ["127.0.0.1::6066"]  # Docker picks each replica's host port
    assert not any(str(v).endswith(":/state") for v in worker["volumes"])
    assert worker["restart"] == "unless-stopped"


@pytest.mark.parametrize("name,compose", [("docker-compose.yml", COMPOSE), ("with the shared-host overlay", SHARED)])
def test_compose_files_match_the_compose_specification(name, compose):
    """The Compose specification's own JSON schema (as vendored by check-jsonschema)."""
    import importlib.resources
    import json

    import jsonschema

    schema = json.loads(
        (importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    )
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


def _finsent_commands(shell: str) -> list[list[str]]:
    """The `finsent ...` invocations in a shell command line, as argument lists."""
    import shlex

    words = shlex.split(shell.replace("(", " ").replace(")", " "))
    commands, current = [], None
    for word in words:
        if word == "finsent":
            current = []
            commands.append(current)
        elif word in ("&&", "||", ";"):
            current = None
        elif current is not None:
            current.append(word)
    return commands


def test_the_worker_waits_for_a_model_the_model_service_writes_where_the_worker_reads():
    import typer.main

    from pipeline.cli import app

    worker, model = SERVICES["worker"], SERVICES["model"]
    assert worker["depends_on"]["model"] == {"condition": "service_completed_successfully"}
    bundle = worker["environment"]["FINSENT_MODEL_BUNDLE"]
    (shell,) = model["command"]
    assert shell.startswith(f"test -f {bundle}/manifest.json ||")  # a bundle already there is kept
    cli = typer.main.get_command(app)
    commands = _finsent_commands(shell)
    assert [c[0] for c in commands] == ["train", "export"]
    for name, *args in commands:  # every option the command line uses exists
        known = {opt for param in cli.commands[name].params for opt in param.opts}
        assert {a for a in args if a.startswith("--")} <= known, f"finsent {name}: unknown option in {args}"
    export = commands[1]
    assert export[export.index("--output") + 1] == bundle
    # Its data is mounted where the command reads it, from the repository's data/.
    data = next(v for v in model["volumes"] if v.endswith(":/data:ro"))
    assert data.startswith("${FINSENT_DATA_DIR:-./data}")
    for arg in commands[0]:
        if arg.startswith("/data/"):
            assert (ROOT / "data" / arg.removeprefix("/data/")).is_file(), arg


def test_alertmanager_in_compose_sends_to_the_alert_receiver_service():
    shipped = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    composed = yaml.safe_load((ROOT / "deploy/alertmanager/alertmanager.compose.yml").read_text())
    (url,) = [w["url"] for r in composed["receivers"] for w in r.get("webhook_configs", [])]
    host, port = re.fullmatch(r"http://([a-z-]+):(\d+)/alerts", url).groups()
    assert host in SERVICES and port in SERVICES[host]["expose"]
    assert SERVICES[host]["command"][0] == "alert-receiver" and port in SERVICES[host]["command"]
    for receiver in composed["receivers"]:  # otherwise the same routes, receivers and inhibitions
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = "http://127.0.0.1:5001/alerts"
    assert composed == shipped
    mounted = [v for v in SERVICES["alertmanager"]["volumes"] if v.endswith(":/etc/alertmanager/alertmanager.yml:ro")]
    assert mounted == ["./deploy/alertmanager/alertmanager.compose.yml:/etc/alertmanager/alertmanager.yml:ro"]


def test_the_lock_pins_every_run_time_dependency_inside_pyproject_ranges_and_ci_tests_it():
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [line for line in (ROOT / "deploy/docker/requirements.lock").read_text().splitlines() if line[:1] != "#"]
    pins = dict(line.split("==") for line in lines)
    assert len(pins) == len(lines) and all(pins.values()), "one exact pin a line"
    for requirement in map(
        Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but not in the lock"
        assert pins[name] in requirement.specifier, (
            f"{name}=={pins[name]} is outside pyproject's {requirement.specifier}"
        )
    # setup.sh (so CI) installs with the lock as constraints: the tests run on the image's versions.
    different = {n: (v, version(n)) for n, v in pins.items() if version(n) != v}
    assert not different, f"installed versions differ from the lock (make setup): {different}"
    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    assert "-c deploy/docker/requirements.lock" in (ROOT / "deploy/local/setup.sh").read_text()
    assert dockerfile.count("pip install -c deploy/docker/requirements.lock") == 2
    # The GPU image: an exact onnxruntime-gpu with NVIDIA's CUDA and cuDNN wheels, the CPU one removed.
    gpu = re.search(r'^ARG ONNXRUNTIME_GPU="onnxruntime-gpu\[cuda,cudnn\]==([\d.]+)"$', dockerfile, re.M)
    assert gpu and "pip uninstall -y onnxruntime" in dockerfile
