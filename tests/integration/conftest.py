"""Integration tests run against the real services, started once per session.

Services that were already up (e.g. started by .ci/run or by hand) are reused and left
running; services this fixture started are stopped at the end. A service that cannot start
fails the run: nothing here is ever skipped.
"""

from __future__ import annotations

import uuid

import pytest

from pipeline import stack
from pipeline.config import Settings, load_settings


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def local_stack(settings: Settings):
    home = settings.stack_home
    already_up = {s.name for s in stack.status(home) if s.healthy}
    try:
        stack.up(home)
    except stack.StackError as exc:
        pytest.fail(f"the local stack could not start: {exc}", pytrace=False)
    yield home
    to_stop = [s.name for s in stack.services(home) if s.name not in already_up]
    if to_stop:
        stack.down(home, to_stop)


@pytest.fixture
def unique() -> str:
    """A suffix that keeps topics, groups and indices of different tests and runs apart."""
    return uuid.uuid4().hex[:10]
