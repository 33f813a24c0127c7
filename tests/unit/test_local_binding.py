"""The local launcher's rank binding: which workers get cores of their own, and the mpiexec line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from launchers import LauncherError, WorkerSpec, get_launcher
from launchers.local import can_bind, mpiexec_argv, plan_binding

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")


def test_a_worker_sized_to_the_machine_gets_one_core_set_per_rank_in_order():
    assert plan_binding(2, 1, {0, 1}, set()) == [[0], [1]]
    assert plan_binding(2, 2, {7, 4, 5, 6}, set()) == [[4, 5], [6, 7]]  # the process may be limited to any cores
    assert plan_binding(1, 3, {2, 0, 1}, set()) == [[0, 1, 2]]


def test_a_worker_taking_part_of_the_machine_or_sharing_it_floats():
    assert plan_binding(1, 1, {0, 1}, set()) is None      # part of the machine: another run may come
    assert plan_binding(4, 4, {0, 1}, set()) is None      # more than the machine (oversubscribed)
    assert plan_binding(2, 1, {0, 1}, {1}) is None        # another live worker is bound


def test_the_mpiexec_line_carries_hydras_user_binding_before_the_rank_count():
    spec = WorkerSpec(worker_id="w1", command=["python", "-m", "hpc_edge", "worker"], workdir=Path("/tmp/w"),
                      ranks_per_node=2, cores_per_rank=2)
    assert mpiexec_argv(spec, "mpiexec", [[0, 1], [2, 3]]) == [
        "mpiexec", "-bind-to", "user:0+1,2+3", "-n", "2", "python", "-m", "hpc_edge", "worker"]
    assert mpiexec_argv(spec, "mpiexec") == ["mpiexec", "-n", "2", "python", "-m", "hpc_edge", "worker"]


def test_only_a_hydra_with_hwloc_is_asked_to_bind():
    assert can_bind(MPIEXEC)  # the MPICH this package installs
    assert not can_bind("/bin/true")  # answers --version with nothing
    assert not can_bind("/nonexistent/mpiexec")


def test_bind_cores_must_be_a_boolean():
    assert get_launcher("local", bind_cores=False).bind_cores is False
    with pytest.raises(LauncherError, match=r"bind_cores must be true or false, not 'no'"):
        get_launcher("local", bind_cores="no")


def test_a_shorter_grace_for_one_reaping_does_not_stay_the_launchers(tmp_path):
    """``hpc-edge run`` ending early reaps its workers with a 2 s grace: that is for that reaping only."""
    import subprocess
    import time

    from launchers.local import LocalLauncher

    launcher = LocalLauncher(kill_grace_s=60.0)
    # a "worker" that ignores SIGTERM, in a group of its own as mpiexec is: only SIGKILL ends it
    proc = subprocess.Popen(["/bin/sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 0.1; done"],
                            start_new_session=True, stdout=subprocess.PIPE, text=True)
    launcher._procs[f"{proc.pid}:w1"] = proc
    try:
        assert proc.stdout.readline() == "trapped\n"  # SIGTERM is ignored from now on, not before
        started = time.monotonic()
        launcher.reap_all(timeout=0, kill_grace_s=0.2)
        assert proc.poll() == -9
        # killed after the short grace: with the launcher's 60 s it would take over a minute
        assert time.monotonic() - started < 30
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert launcher.kill_grace_s == 60.0
