"""deploy/'s Prometheus and Alertmanager files, checked by the real promtool/amtool and servers."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from pipeline import receiver
from pipeline.stack.base import DEPLOY_DIR
from pipeline.stack.prometheus import write_worker_targets

from .harness import Pipeline, texts_by_prediction, wait_for


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
    expected = {
        r["alert"]
        for g in yaml.safe_load((DEPLOY_DIR / "prometheus/rules/finsent.yml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
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


@pytest.fixture
def webhook():
    """finsent's alert receiver where deploy/alertmanager/alertmanager.yml points (127.0.0.1:5001)."""
    received: list = []
    server = receiver.start("127.0.0.1", 5001, received.append)
    yield received
    server.shutdown()
    server.server_close()


def test_a_finsent_alert_reaches_alertmanager_through_prometheus(
    local_stack: Path, tiny_bundle, phrasebank, tmp_path, unique, webhook
):
    rules = tmp_path / "rules.yml"
    # resolve_after is large so the episode is still firing when Prometheus scrapes.
    rules.write_text(
        "rules:\n  - {name: burst, kind: negative_share, threshold: 0.5, min_messages: 3, "
        "severity: page, resolve_after: 100}\n"
    )
    pipeline = Pipeline(
        name=f"p{unique}",
        bundle=tiny_bundle,
        workdir=tmp_path,
        extra_env={"FINSENT_ALERT_RULES": str(rules), "FINSENT_WINDOW_LATENESS_S": "5", "FINSENT_WINDOW_IDLE_S": "2"},
    )
    ticker = f"P{unique[:6].upper()}"
    negative, positive = texts_by_prediction(tiny_bundle, phrasebank)
    base = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    stream = [
        {
            "id": f"{ticker}-{i}",
            "text": negative[i],
            "tickers": [ticker],
            "published_at": (base + timedelta(seconds=20 * i)).isoformat(),
        }
        for i in range(9)
    ]
    stream.append(
        {
            "id": f"{ticker}-end",
            "text": positive[0],
            "tickers": [ticker],
            "published_at": (base + timedelta(minutes=4)).isoformat(),
        }
    )
    targets = local_stack / "prometheus" / "targets" / "workers.json"
    previous = targets.read_text() if targets.exists() else None
    try:
        worker = pipeline.start_worker()
        write_worker_targets(local_stack, [f"127.0.0.1:{worker.port}"])
        pipeline.produce([json.dumps(m).encode() for m in stream])
        wait_for(
            lambda: worker.metric("finsent_alert_active", rule="burst", topic=ticker, severity="page") == 1,
            120,
            "the worker's finsent_alert_active gauge",
        )

        def prometheus_alert():
            alerts = _get("http://127.0.0.1:9090/api/v1/alerts")["data"]["alerts"]
            return [
                a
                for a in alerts
                if a["labels"].get("alertname") == "FinsentAlertActive"
                and a["labels"].get("topic") == ticker
                and a["state"] == "firing"
            ]

        firing = wait_for(prometheus_alert, 90, "Prometheus to fire FinsentAlertActive", interval_s=1)
        assert firing[0]["labels"]["severity"] == "page" and firing[0]["labels"]["rule"] == "burst"

        def alertmanager_alert():
            alerts = _get("http://127.0.0.1:9093/api/v2/alerts")
            return [a for a in alerts if a["labels"].get("topic") == ticker]

        received = wait_for(alertmanager_alert, 60, "the alert in Alertmanager", interval_s=1)
        assert received[0]["labels"]["alertname"] == "FinsentAlertActive"
        assert received[0]["status"]["state"] == "active"
        delivered = wait_for(
            lambda: [a for post in webhook for a in post["alerts"] if a["labels"].get("topic") == ticker],
            60,
            "the webhook delivery",
            interval_s=1,
        )
        assert delivered[0]["status"] == "firing" and delivered[0]["labels"]["severity"] == "page"
    finally:
        pipeline.stop_all()
        if previous is None:
            targets.unlink(missing_ok=True)
        else:
            targets.write_text(previous)


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())
