"""The local stack's bookkeeping, without starting any program."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import stack
from pipeline.stack.base import Service, StackError


class Recorded(Service):
    """A service that never runs a program: only its directories matter here."""

    name = "recorded"


def test_wipe_state_deletes_the_data_and_keeps_the_configuration(tmp_path: Path) -> None:
    service = Recorded(tmp_path)
    (service.dir / "data" / "topic-0").mkdir(parents=True)
    (service.dir / "data" / "topic-0" / "00000.log").write_bytes(b"x")
    (service.dir / "server.properties").write_text("node.id=1\n")

    service.wipe_state()

    assert not (service.dir / "data").exists()
    assert (service.dir / "server.properties").read_text() == "node.id=1\n"


def test_wipe_state_refuses_a_running_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = Recorded(tmp_path)
    (service.dir / "data").mkdir(parents=True)
    monkeypatch.setattr(Recorded, "pid", lambda self: 4242)

    with pytest.raises(StackError, match="recorded is running"):
        service.wipe_state()
    assert (service.dir / "data").exists()


def test_a_failed_start_quotes_every_log_the_service_names(tmp_path: Path) -> None:
    kafka = stack.services(tmp_path, ["kafka"])[0]
    (kafka.dir / "logs").mkdir(parents=True)
    kafka.log_file.write_text("")
    (kafka.dir / "logs" / "server.log").write_text("ERROR Exiting Kafka due to fatal exception\n")
    kafka.start_timeout_s = 0.1
    kafka.healthy = lambda: False  # type: ignore[method-assign]

    with pytest.raises(StackError, match="(?s)did not become healthy.*server.log:\nERROR Exiting Kafka"):
        kafka.wait_healthy()
