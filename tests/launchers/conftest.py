"""Fixtures for the launcher tests (helpers live in launcher_testkit.py)."""

from __future__ import annotations

import pytest

from launcher_testkit import FakeCommands


@pytest.fixture
def fake_commands(monkeypatch) -> FakeCommands:
    """Replace run_command everywhere the launchers call it; answers come from recorded outputs."""
    fake = FakeCommands()
    for module in ("launchers.base", "launchers.render", "launchers.slurm", "launchers.lsf"):
        monkeypatch.setattr(f"{module}.run_command", fake)
    return fake
