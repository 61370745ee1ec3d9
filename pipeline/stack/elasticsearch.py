"""Elasticsearch, single node, security off, from Maven Central's integration-test distribution.

That zip carries only the core, x-pack-core/security and netty modules (no analysis-common,
painless or ingest), which is why finsent's templates and queries use none of them.
Elasticsearch refuses to run as root, so as root the node runs as the system user ``finsent``
and its directory lives under /var/lib/finsent (root's home is not readable by other users);
``<stack home>/elasticsearch`` is then a symlink to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import urllib.request
import zipfile
from pathlib import Path

from .base import Service, StackError, find_java_home, maven_fetch
from .kafka import POM, pom_property

SERVICE_USER = "finsent"


def ensure_service_user() -> str:
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise StackError(
                f"elasticsearch: cannot create the user {SERVICE_USER!r} to run it as: {result.stderr}"
            ) from None
    return SERVICE_USER


class Elasticsearch(Service):
    name = "elasticsearch"
    port = 9200
    transport_port = 9300
    start_timeout_s = 180.0
    heap = "512m"

    def __init__(self, home: Path):
        super().__init__(home)
        if os.geteuid() == 0:
            # Root's home is mode 700; keep the node's files where its user can reach them.
            key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]
            self.real_dir = Path("/var/lib/finsent") / f"elasticsearch-{key}"
        else:
            self.real_dir = self.dir

    @property
    def es_version(self) -> str:
        return pom_property("elasticsearch.version")

    @property
    def zip_path(self) -> Path:
        return self.home / "downloads" / f"elasticsearch-{self.es_version}.zip"

    @property
    def install_dir(self) -> Path:
        return self.real_dir / f"elasticsearch-{self.es_version}"

    def run_as(self) -> str | None:
        return ensure_service_user() if os.geteuid() == 0 else None

    def install(self) -> None:
        if not self.zip_path.exists():
            self.zip_path.parent.mkdir(parents=True, exist_ok=True)
            maven_fetch(
                [
                    "-f",
                    str(POM),
                    "dependency:copy",
                    f"-Dartifact=org.elasticsearch.distribution.integ-test-zip:elasticsearch:{self.es_version}:zip",
                    f"-DoutputDirectory={self.zip_path.parent}",
                ],
                f"Elasticsearch {self.es_version}",
                Path.home() / ".m2" / "repository" / "org" / "elasticsearch",
            )
        self.java_home = find_java_home(21, "ES_JAVA_HOME")
        self.real_dir.mkdir(parents=True, exist_ok=True)
        if self.real_dir != self.dir and not self.dir.is_symlink():
            if self.dir.exists():
                shutil.rmtree(self.dir)
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            self.dir.symlink_to(self.real_dir)
        if not (self.install_dir / "bin" / "elasticsearch").exists():
            with zipfile.ZipFile(self.zip_path) as archive:
                archive.extractall(self.real_dir)
            for script in (self.install_dir / "bin").iterdir():
                script.chmod(0o755)
            for jdk_bin in (self.install_dir / "jdk" / "bin").glob("*") if (self.install_dir / "jdk").exists() else []:
                jdk_bin.chmod(0o755)
        config = self.real_dir / "config"
        if not config.exists():
            shutil.copytree(self.install_dir / "config", config)
        (config / "elasticsearch.yml").write_text(self._config())
        (config / "jvm.options.d").mkdir(exist_ok=True)
        (config / "jvm.options.d" / "finsent.options").write_text(f"-Xms{self.heap}\n-Xmx{self.heap}\n")
        for sub in ("data", "logs", "tmp"):
            (self.real_dir / sub).mkdir(exist_ok=True)
        user = self.run_as()
        if user is not None:
            subprocess.run(["chown", "-R", f"{user}:{user}", str(self.real_dir)], check=True)

    def _config(self) -> str:
        return "\n".join(
            [
                "# Written by `finsent stack up`; edit pipeline/stack/elasticsearch.py instead.",
                "cluster.name: finsent-local",
                "node.name: finsent-1",
                f"path.data: {self.real_dir / 'data'}",
                f"path.logs: {self.real_dir / 'logs'}",
                "network.host: 127.0.0.1",
                f"http.port: {self.port}",
                f"transport.port: {self.transport_port}",
                "discovery.type: single-node",
                "xpack.security.enabled: false",
                # Developer machines often have less free disk than the default watermarks want.
                "cluster.routing.allocation.disk.threshold_enabled: false",
                "",
            ]
        )

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ES_JAVA_HOME=str(getattr(self, "java_home", "") or find_java_home(21, "ES_JAVA_HOME")),
            ES_PATH_CONF=str(self.real_dir / "config"),
            ES_TMPDIR=str(self.real_dir / "tmp"),
        )
        env.pop("JAVA_HOME", None)
        env.pop("ES_JAVA_OPTS", None)
        return env

    def command(self) -> list[str]:
        return [str(self.install_dir / "bin" / "elasticsearch")]

    def _get(self, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def healthy(self) -> bool:
        health = self._get("/_cluster/health")
        return bool(health) and health.get("status") in ("green", "yellow")

    def state_dirs(self) -> list[Path]:
        return [self.real_dir / "data"]

    def log_files(self) -> list[Path]:
        return [self.log_file, self.real_dir / "logs" / "finsent-local.log"]

    def version(self) -> str:
        # GET / is not served by the integration-test distribution (its handler is in a module
        # that zip lacks); the node info API is.
        info = self._get("/_nodes/_local?filter_path=nodes.*.version")
        nodes = list((info or {}).get("nodes", {}).values())
        return nodes[0]["version"] if nodes else "?"
