"""Rendered PBS and LSF scripts run for real in bash/sh with the venv's mpiexec, no batch system.

There is no PBS or LSF here, but the scripts' own logic (cd, exports, setup lines, the USR1 trap that
forwards the warning signal to mpiexec and on to the ranks, the exit status) is plain shell and can run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launchers import WorkerSpec, get_launcher
from tests.helpers import mpi_segments, remove_orphan_segments

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(300)]

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")

RANK_PROGRAM = r"""
import os, signal, sys, time
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
got = []
signal.signal(signal.SIGUSR1, lambda signo, frame: got.append(signo))
with open(f".tmp.{rank}", "w") as f:  # written whole, then renamed: the test never reads half a file
    f.write(os.environ.get("FROM_SETUP", "") + "|" + os.environ.get("EDGE_X", ""))
os.rename(f".tmp.{rank}", f"ready.{rank}")
deadline = time.time() + float(sys.argv[1])
while not got and time.time() < deadline:
    time.sleep(0.05)
if got:
    open(f"usr1.{rank}", "w").close()
sys.exit(int(sys.argv[2]))
"""

SHELLS = {"pbs": "bash", "lsf": "sh"}


@pytest.fixture(autouse=True)
def no_orphan_segments():
    """The test program's ranks are killed or exit early: remove the MPI shared memory they leave."""
    before = mpi_segments()
    yield
    remove_orphan_segments(before)


def start(system: str, workdir: Path, wait_s: float, exit_code: int = 0) -> subprocess.Popen:
    spec = WorkerSpec(worker_id="run1", workdir=workdir, ranks_per_node=2, walltime_s=600,
                      command=[sys.executable, "-c", RANK_PROGRAM, str(wait_s), str(exit_code)],
                      env={"EDGE_X": "x y"}, setup_lines=["FROM_SETUP=setup-ran; export FROM_SETUP"])
    script = workdir.parent / f"{system}.sh"
    workdir.mkdir(parents=True)
    script.write_text(get_launcher(system, mpi_launch=MPIEXEC).render_script(spec))
    return subprocess.Popen([SHELLS[system], str(script)], cwd="/", start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_files(workdir: Path, prefix: str, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(workdir.glob(f"{prefix}.*"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"script ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {count} {prefix}.* files in {workdir} after {timeout} s")


@pytest.mark.parametrize("system", sorted(SHELLS))
def test_usr1_sent_to_the_batch_shell_reaches_every_rank(system, tmp_path):
    workdir = tmp_path / "w"
    proc = start(system, workdir, wait_s=60)
    try:
        wait_for_files(workdir, "ready", 2, proc)
        assert {p.read_text() for p in workdir.glob("ready.*")} == {"setup-ran|x y"}  # cwd, setup, env
        os.kill(proc.pid, signal.SIGUSR1)  # what the batch system's warning does to the job shell
        wait_for_files(workdir, "usr1", 2, proc)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("system", sorted(SHELLS))
def test_script_exit_status_is_the_launchers(system, tmp_path):
    proc = start(system, tmp_path / "w", wait_s=0, exit_code=3)
    assert proc.wait(timeout=60) != 0, proc.stderr.read()


@pytest.mark.parametrize("system", sorted(SHELLS))
def test_term_to_the_batch_shell_stops_the_ranks(system, tmp_path):
    workdir = tmp_path / "w"
    proc = start(system, workdir, wait_s=60)
    try:
        wait_for_files(workdir, "ready", 2, proc)
        os.kill(proc.pid, signal.SIGTERM)  # what PBS/LSF send at the walltime
        assert proc.wait(timeout=30) != 0
        assert not list(workdir.glob("usr1.*"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
