"""`finsent stack` as a user runs it: status of the running stack, and a clean down."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.stack import StackError
from pipeline.stack.prometheus import Alertmanager


def finsent(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_status_lists_every_service_healthy(local_stack):
    result = finsent("stack", "status")
    assert result.returncode == 0, result.stdout + result.stderr
    for name, port in [("kafka", 9092), ("elasticsearch", 9200), ("prometheus", 9090), ("alertmanager", 9093)]:
        line = next(line for line in result.stdout.splitlines() if name in line)
        assert f"127.0.0.1:{port}" in line and "healthy" in line


def test_up_again_is_idempotent(local_stack):
    result = finsent("stack", "up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("healthy") == 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


def test_a_service_starts_and_down_leaves_no_process(tmp_path):
    service = Alertmanager(tmp_path)
    service.port = free_port()
    service.start()
    try:
        assert service.status().healthy
        assert processes_mentioning(str(tmp_path))
    finally:
        assert service.stop() is True
    assert processes_mentioning(str(tmp_path)) == []
    assert service.stop() is False  # idempotent


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        service = Alertmanager(tmp_path)
        service.port = squatter.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {service.port} on 127.0.0.1 is already in use"):
            service.start()
