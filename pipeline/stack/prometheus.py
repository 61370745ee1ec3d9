"""Prometheus and Alertmanager from Debian's packages, configured from deploy/.

deploy/prometheus/prometheus.yml is written for docker-compose (targets by service name). The
local stack renders a copy with loopback addresses, and scrapes finsent workers through a
file-based target list (``<stack home>/prometheus/targets/workers.json``) so tests and several
local workers can add themselves without a restart.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import yaml

from .base import DEPLOY_DIR, Service, StackError

# docker-compose service name -> local address.
LOCAL_ADDRESSES = {"prometheus:9090": "127.0.0.1:9090", "alertmanager:9093": "127.0.0.1:9093"}
WORKER_JOB = "finsent-worker"
DEFAULT_WORKER_TARGET = "127.0.0.1:6066"


def debian_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` is not installed: apt-get install {package}")
    return path


def _http_text(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.read().decode()
    except OSError:
        return None


def _reload(port: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/-/reload", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except OSError as exc:
        raise StackError(f"reloading the configuration on port {port} failed: {exc}") from None


def _binary_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else "?"


class _Reloadable(Service):
    def refresh(self) -> None:
        """deploy/'s files may have changed since it started: copy them again and reload."""
        self.install()
        _reload(self.port)


class Prometheus(_Reloadable):
    name = "prometheus"
    port = 9090
    start_timeout_s = 60.0

    @property
    def targets_dir(self) -> Path:
        return self.dir / "targets"

    def install(self) -> None:
        self.binary = debian_binary("prometheus", "prometheus")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(exist_ok=True)
        rules = self.dir / "rules"
        if rules.exists():
            shutil.rmtree(rules)
        shutil.copytree(DEPLOY_DIR / "prometheus" / "rules", rules)
        workers = self.targets_dir / "workers.json"
        if not workers.exists():
            write_worker_targets(self.home, [DEFAULT_WORKER_TARGET])
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(render_local_config(), sort_keys=False))

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=7d",
        ]

    def healthy(self) -> bool:
        return (_http_text(f"http://127.0.0.1:{self.port}/-/ready") or "").strip().lower().startswith("prometheus")

    def version(self) -> str:
        return _binary_version(shutil.which("prometheus") or "prometheus")


class Alertmanager(_Reloadable):
    name = "alertmanager"
    port = 9093
    start_timeout_s = 60.0

    def install(self) -> None:
        self.binary = debian_binary("prometheus-alertmanager", "prometheus-alertmanager")
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEPLOY_DIR / "alertmanager" / "alertmanager.yml", self.dir / "alertmanager.yml")

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.dir / 'alertmanager.yml'}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # A single local instance: no gossip port.
            "--cluster.listen-address=",
        ]

    def healthy(self) -> bool:
        return _http_text(f"http://127.0.0.1:{self.port}/-/ready") is not None

    def version(self) -> str:
        return _binary_version(shutil.which("prometheus-alertmanager") or "prometheus-alertmanager")


def render_local_config() -> dict:
    """deploy/prometheus/prometheus.yml with loopback addresses and file-based worker targets."""
    config = yaml.safe_load((DEPLOY_DIR / "prometheus" / "prometheus.yml").read_text())
    for alerting in config.get("alerting", {}).get("alertmanagers", []):
        for static in alerting.get("static_configs", []):
            static["targets"] = [LOCAL_ADDRESSES.get(t, t) for t in static["targets"]]
    for job in config.get("scrape_configs", []):
        if job["job_name"] == WORKER_JOB:
            job.pop("static_configs", None)
            job.pop("dns_sd_configs", None)
            job["file_sd_configs"] = [{"files": ["targets/*.json"], "refresh_interval": "5s"}]
        else:
            for static in job.get("static_configs", []):
                static["targets"] = [LOCAL_ADDRESSES.get(t, t) for t in static["targets"]]
    return config


def write_worker_targets(home: Path, targets: list[str]) -> Path:
    """Tells the local Prometheus which finsent workers to scrape (picked up within seconds)."""
    path = home / "prometheus" / "targets" / "workers.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": targets, "labels": {"deployment": "local"}}]))
    tmp.replace(path)  # atomic: Prometheus never reads a half-written file
    return path
