"""The real services finsent talks to, run locally on 127.0.0.1 without Docker.

``up`` installs (cached) and starts each service in dependency order and waits until it is
healthy; ``down`` stops them in reverse order. Both are idempotent.
"""

from __future__ import annotations

from pathlib import Path

from .base import Service, StackError, Status
from .elasticsearch import Elasticsearch
from .kafka import Kafka
from .prometheus import Alertmanager, Prometheus, write_worker_targets

__all__ = ["StackError", "Status", "services", "up", "down", "status", "write_worker_targets"]

SERVICE_CLASSES: dict[str, type[Service]] = {
    "kafka": Kafka,
    "elasticsearch": Elasticsearch,
    "alertmanager": Alertmanager,
    "prometheus": Prometheus,
}


def services(home: Path, names: list[str] | None = None) -> list[Service]:
    unknown = sorted(set(names or []) - set(SERVICE_CLASSES))
    if unknown:
        raise StackError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICE_CLASSES)}")
    return [cls(home) for name, cls in SERVICE_CLASSES.items() if not names or name in names]


def up(home: Path, names: list[str] | None = None, fresh: bool = False) -> list[Status]:
    """Starts the services; ``fresh`` first stops them and wipes their data (a clean slate, as CI wants)."""
    home.mkdir(parents=True, exist_ok=True)
    chosen = services(home, names)
    if fresh:
        down(home, names)
        for service in chosen:
            service.wipe_state()
    started = []
    for service in chosen:
        service.start()
        started.append(service.status())
    return started


def down(home: Path, names: list[str] | None = None) -> list[str]:
    return [s.name for s in reversed(services(home, names)) if s.stop()]


def status(home: Path, names: list[str] | None = None) -> list[Status]:
    return [s.status() for s in services(home, names)]
