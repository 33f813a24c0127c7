"""Shared fixtures: the real-Slurm and real-browser gates and a per-test data directory."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def slurm_available() -> tuple[bool, str]:
    """Whether a Slurm cluster answers here, and why not."""
    if shutil.which("sinfo") is None:
        return False, "no sinfo on PATH (start one with: scripts/slurm-single-node.sh up)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False, "sinfo timed out"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*") in ("idle", "mixed", "allocated", "completing") for s in states):
        return False, f"no usable Slurm node (sinfo: {out.stdout.strip() or out.stderr.strip()})"
    return True, ""


@pytest.fixture(scope="session")
def browser() -> str:
    """Headless Chromium's path. Skip (or, with HPC_EDGE_REQUIRE_BROWSER=1, fail) without one."""
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        why = "no chromium on PATH (as root: apt-get install chromium)"
        if os.environ.get("HPC_EDGE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"HPC_EDGE_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(f"needs a real browser: {why}")
    return found


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skip (or, with HPC_EDGE_REQUIRE_SLURM=1, fail) unless a real Slurm cluster answers."""
    ok, why = slurm_available()
    if not ok:
        if os.environ.get("HPC_EDGE_REQUIRE_SLURM") == "1":
            pytest.fail(f"HPC_EDGE_REQUIRE_SLURM=1 but Slurm is not usable: {why}")
        pytest.skip(f"needs a real Slurm cluster: {why}")
    return True
