"""Apache Kafka, single node in KRaft mode, from Maven Central jars (see deploy/local/pom.xml)."""

from __future__ import annotations

import base64
import re
import subprocess
import time
import uuid
from pathlib import Path

from .base import DEPLOY_DIR, Service, StackError, find_java_home, maven_fetch, port_open

POM = DEPLOY_DIR / "local" / "pom.xml"


def pom_property(name: str) -> str:
    match = re.search(rf"<{name}>([^<]+)</{name}>", POM.read_text())
    if not match:
        raise StackError(f"{POM}: property <{name}> is missing")
    return match.group(1)


class Kafka(Service):
    name = "kafka"
    port = 9092
    controller_port = 9094
    start_timeout_s = 180.0  # a loaded 2-core machine, or logs to recover after an unclean stop

    @property
    def kafka_version(self) -> str:
        return pom_property("kafka.version")

    @property
    def jars(self) -> Path:
        return self.home / "downloads" / f"kafka-{self.kafka_version}"

    def install(self) -> None:
        marker = self.jars / ".complete"
        if not marker.exists():
            self.jars.mkdir(parents=True, exist_ok=True)
            maven_fetch(
                [
                    "-f",
                    str(POM),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={self.jars}",
                    "-DincludeScope=runtime",
                ],
                f"Kafka {self.kafka_version}",
                Path.home() / ".m2" / "repository",
            )
            marker.touch()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "server.properties").write_text(self._server_properties())
        (self.dir / "log4j2.yaml").write_text((DEPLOY_DIR / "local" / "kafka-log4j2.yaml").read_text())
        if not (self.dir / "data" / "meta.properties").exists():
            self._format_storage()

    def _java(self) -> str:
        return str(find_java_home(17, "KAFKA_JAVA_HOME") / "bin" / "java")

    def _classpath(self) -> str:
        return str(self.jars / "*")

    def _server_properties(self) -> str:
        return "\n".join(
            [
                "# Written by `finsent stack up`; edit deploy/local or pipeline/stack/kafka.py instead.",
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                *self._listener_properties(),
                f"log.dirs={self.dir / 'data'}",
                "num.partitions=1",
                # One node: the internal topics need not be spread over 50 partitions each.
                "offsets.topic.num.partitions=10",
                "transaction.state.log.num.partitions=10",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # One node, tests start many consumer groups: no rebalance delay.
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "",
            ]
        )

    def _listener_properties(self) -> list[str]:
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        ]

    def _format_options(self) -> list[str]:
        """Extra `kafka-storage format` options (e.g. SCRAM users written into the metadata log)."""
        return []

    def _format_storage(self) -> None:
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own Uuid.randomUuid: "-..." reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(
            [
                self._java(),
                "-cp",
                self._classpath(),
                *self._log_props(),
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.dir / "server.properties"),
                *self._format_options(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise StackError(f"{self.name}: formatting storage failed:\n{result.stdout}\n{result.stderr}")

    def _log_props(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.dir / 'log4j2.yaml'}", f"-Dkafka.logs.dir={self.dir / 'logs'}"]

    def command(self) -> list[str]:
        return [
            self._java(),
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            *self._log_props(),
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.dir / "server.properties"),
        ]

    def healthy(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.address, request_timeout_ms=3000, client_id="finsent-stack")
        except (KafkaError, OSError, ValueError):
            return False
        try:
            admin.describe_cluster()
            return True
        except (KafkaError, OSError):
            return False
        finally:
            admin.close()

    def warm_up(self, deadline: float) -> None:
        """Has the broker create its internal topics (consumer offsets, transaction state) now,
        so the first consumer group and the first exactly-once worker do not wait for them."""
        from kafka import KafkaAdminClient, KafkaProducer
        from kafka.errors import KafkaError

        while True:
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.address, client_id="finsent-stack")
                try:
                    admin.describe_groups(["finsent-stack-warm-up"])
                finally:
                    admin.close()
                producer = KafkaProducer(
                    bootstrap_servers=self.address, transactional_id="finsent-stack-warm-up", max_block_ms=10_000
                )
                try:
                    producer.init_transactions()
                finally:
                    producer.close(timeout=5)
                return
            except (KafkaError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"kafka: its group and transaction coordinators never answered ({exc!r})") from exc
                time.sleep(1.0)

    def version(self) -> str:
        return self.kafka_version

    def log_files(self) -> list[Path]:
        return [self.log_file, self.dir / "logs" / "server.log"]
