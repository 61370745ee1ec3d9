"""The Helm chart (deploy/helm/finsent) rendered by the real `helm` for the default and the
production values: lint, every object valid against the Kubernetes schemas, and the values that
matter (replicas against partitions, probes, secrets by reference only, the shipped rules).
No cluster is reachable here: this checks everything short of one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "finsent"
PRODUCTION = CHART / "values-production.yaml"
KUBERNETES = "1.33.0"  # the oldest Kubernetes release the chart is checked against
CRD_KINDS = {"ScaledObject", "PodMonitor", "PrometheusRule"}  # schemas not in kubernetes-validate


def helm_binary() -> str:
    found = shutil.which("helm") or str(Path.home() / ".cache" / "finsent" / "bin" / "helm")
    assert Path(found).exists(), "helm is not installed: run deploy/local/setup.sh"
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, check=check)


def render(*values: str, sets: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", "demo", str(CHART)]
    for path in values:
        args += ["-f", path]
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for obj in objects:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def worker(objects: list[dict]) -> dict:
    (statefulset,) = by_kind(objects)["StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("values", [(), (str(PRODUCTION),)], ids=["default", "production"])
def test_the_chart_lints_and_renders_objects_valid_against_the_kubernetes_schemas(values):
    lint = helm("lint", str(CHART), *[a for v in values for a in ("-f", v)], "--strict", check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    objects = render(*values)
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] in ("keda.sh/v1alpha1", "monitoring.coreos.com/v1") and obj["spec"]
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)  # raises on an invalid object
    kinds = by_kind(objects)
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget"} <= set(kinds)


def test_default_values_run_two_workers_with_probes_and_a_locked_down_container():
    objects = render()
    kinds = by_kind(objects)
    assert not CRD_KINDS & set(kinds)  # KEDA and the Prometheus operator are opt-in
    statefulset = kinds["StatefulSet"][0]
    assert statefulset["spec"]["replicas"] == 2
    container = worker(objects)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert statefulset["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {c["metadata"]["name"]: c for c in kinds["ConfigMap"]}["demo-finsent-env"]["data"]
    assert env["FINSENT_TOPIC_PARTITIONS"] == "4" and env["FINSENT_STATE_DIR"] == "/state"
    assert env["FINSENT_MODEL_BUNDLE"] == "/models/current"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/state", "/tmp", "/etc/finsent"} <= mounts  # every path the worker writes is a volume


def test_production_values_scale_on_lag_up_to_the_partitions_and_reference_secrets_only():
    objects = render(str(PRODUCTION))
    kinds = by_kind(objects)
    (scaled,) = kinds["ScaledObject"]
    assert scaled["spec"]["maxReplicaCount"] == 12 and scaled["spec"]["triggers"][0]["type"] == "kafka"
    assert scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] == "finsent-prod"
    assert "replicas" not in kinds["StatefulSet"][0]["spec"]  # KEDA owns the count
    assert "Secret" not in kinds  # secrets are referenced, never rendered
    env = {e["name"]: e.get("value") for e in worker(objects)["env"]}
    assert env["FINSENT_KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/finsent/kafka-sasl-password"
    assert env["FINSENT_ES_API_KEY_FILE"] == "/run/secrets/finsent/es-api-key"
    assert not {"FINSENT_KAFKA_SASL_PASSWORD", "FINSENT_ES_API_KEY", "FINSENT_ES_PASSWORD"} & set(env)
    (config,) = [c for c in kinds["ConfigMap"] if "FINSENT_TOPIC_PARTITIONS" in c["data"]]
    durability = {k: config["data"][k] for k in config["data"] if "REPLICA" in k or "RETENTION" in k}
    assert durability == {
        "FINSENT_TOPIC_REPLICATION_FACTOR": "3",
        "FINSENT_TOPIC_MIN_INSYNC_REPLICAS": "2",
        "FINSENT_ES_NUMBER_OF_REPLICAS": "1",
        "FINSENT_ES_RETENTION_DAYS": "90",
        "FINSENT_ES_SUMMARY_RETENTION_DAYS": "730",
    }
    from pipeline.config import Settings

    settings = Settings(**{k.removeprefix("FINSENT_").lower(): v for k, v in durability.items()})
    assert settings.topic_min_insync_replicas == 2 and settings.es_number_of_replicas == 1
    assert (settings.es_retention_days, settings.es_summary_retention_days) == (90, 730)
    volumes = {v["name"]: v for v in kinds["StatefulSet"][0]["spec"]["template"]["spec"]["volumes"]}
    sources = [s["secret"]["name"] for s in volumes["secrets"]["projected"]["sources"]]
    assert sources == ["finsent-kafka", "finsent-kafka-ca", "finsent-es", "finsent-es-ca"]
    (rule,) = kinds["PrometheusRule"]
    shipped = yaml.safe_load((ROOT / "deploy/prometheus/rules/finsent.yml").read_text())
    assert rule["spec"]["groups"] == shipped["groups"]
    (monitor,) = kinds["PodMonitor"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"] == "finsent-worker"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("replicas=5",), "replicas (5) is more than partitions (4)"),
        (
            ("autoscaling.enabled=true", "autoscaling.maxReplicas=8"),
            "autoscaling.maxReplicas (8) is more than partitions",
        ),
        (("config.ES_PASSWORD=hunter2",), "config.ES_PASSWORD looks like a secret"),
        (("config.FINSENT_MAX_BATCH=32",), "without the FINSENT_ prefix"),
        (("model.source=pvc",), "model.pvc.claimName is empty"),
    ],
)
def test_values_that_cannot_work_stop_the_render_with_what_to_change(sets, message):
    args = ["template", "demo", str(CHART)] + [a for s in sets for a in ("--set", s)]
    result = helm(*args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_gpu_workers_get_the_cuda_image_a_gpu_and_its_node_selector():
    objects = render(sets=("gpu.enabled=true", "gpu.nodeSelector.accelerator=nvidia"))
    container = worker(objects)
    assert container["image"].startswith("finsent-gpu:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert by_kind(objects)["StatefulSet"][0]["spec"]["template"]["spec"]["nodeSelector"] == {"accelerator": "nvidia"}


def test_the_charts_rule_files_are_the_shipped_ones():
    assert (CHART / "files/prometheus-rules.yml").read_bytes() == (
        ROOT / "deploy/prometheus/rules/finsent.yml"
    ).read_bytes()
    assert (CHART / "files/alert-rules.yml").read_bytes() == (ROOT / "deploy/alerts/rules.yml").read_bytes()
