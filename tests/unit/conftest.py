"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from hpc_edge.executor import Executor


@pytest.fixture
def ex():
    """A rank's executor with one core and no watchdog, killed and closed after the test (a test
    module's own ``ex`` fixture takes its place there)."""
    executor = Executor(rank=0, cores=1, memory_mb=1000, guard=False)
    yield executor
    executor.hard_kill_all()
    executor.close()
