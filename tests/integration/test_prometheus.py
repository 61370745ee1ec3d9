"""deploy/'s Prometheus and Alertmanager files, checked by the real promtool/amtool and servers."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from pipeline.stack.base import DEPLOY_DIR


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_promtool_checks_deploy_config():
    result = run("promtool", "check", "config", str(DEPLOY_DIR / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests():
    tests = sorted(str(p) for p in (DEPLOY_DIR / "prometheus" / "tests").glob("*.test.yml"))
    assert tests
    result = run("promtool", "test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_checks_alertmanager_config():
    result = run("amtool", "check-config", str(DEPLOY_DIR / "alertmanager" / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_local_rendered_config_is_valid_and_loaded(local_stack: Path):
    rendered = local_stack / "prometheus" / "prometheus.yml"
    result = run("promtool", "check", "config", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "worker:6066" not in rendered.read_text()  # loopback only

    def get(url: str) -> dict:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    # The running Prometheus loaded deploy/'s rules and found the local Alertmanager.
    rules = get("http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
    expected = {r["alert"] for g in yaml.safe_load((DEPLOY_DIR / "prometheus/rules/finsent.yml").read_text())["groups"]
                for r in g["rules"] if "alert" in r}
    assert expected <= {r["name"] for g in rules for r in g["rules"]}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        managers = get("http://127.0.0.1:9090/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        if any("127.0.0.1:9093" in m["url"] for m in managers):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"Prometheus did not discover the local Alertmanager: {managers}")
    status = get("http://127.0.0.1:9093/api/v2/status")
    assert status["cluster"]["status"] in ("disabled", "ready")
