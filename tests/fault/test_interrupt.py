"""Ctrl-C on ``hpc-edge run``: no orphan processes, and ``--resume`` finishes without re-running."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
from collections import Counter

import psutil
import pytest

from tests.helpers import HPC_EDGE, jobs_by, processes_under, query, run_json, scalar, wait_for, write_workload

pytestmark = [pytest.mark.mpi, pytest.mark.fault]


def test_sigint_leaves_no_orphans_and_resume_completes(tmp_path):
    ran = tmp_path / "ran.log"
    workload = write_workload(tmp_path, f"""
name: slow
tasks:
  - name: slow
    command: sleep 1 && echo {{job_id}} >> {ran}
    count: 24
""")
    data = tmp_path / "run"
    proc = subprocess.Popen([*HPC_EDGE, "run", workload, "--ranks", "2", "--data-dir", data, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: scalar(data, "SELECT count(*) FROM jobs WHERE state='finished'") >= 3 and scalar(
            data, "SELECT count(*) FROM jobs WHERE state='running'") >= 1, 120, "some jobs finished, some running")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "--resume" in out
    assert processes_under(data) == []
    states = Counter(j["state"] for j in jobs_by(data).values())
    assert set(states) <= {"finished", "activated"}, states
    finished_before = {j for j, row in jobs_by(data).items() if row["state"] == "finished"}
    assert 3 <= len(finished_before) < 24

    code, summary = run_json("run", workload, "--ranks", "2", "--data-dir", data, "--resume")
    assert code == 0, summary
    assert summary["resumed"] and summary["states"] == {"finished": 24}
    jobs = jobs_by(data)
    for job_id in finished_before:
        assert jobs[job_id]["dispatch"] == 1, f"finished job {job_id} was dispatched again"
    # jobs that were out on the interrupted worker ran again, without burning an attempt
    assert any(j["dispatch"] == 2 for j in jobs.values())
    assert all(j["attempt"] == 1 for j in jobs.values())
    # every payload completed exactly once, counted from the payloads' own output
    assert Counter(int(line) for line in ran.read_text().split()) == Counter({j: 1 for j in jobs})
    assert processes_under(data) == []


def held_workload(tmp_path, count: int):
    """(ran.log, gate, workload): ``count`` jobs held until the gate file exists, each then writing
    its job id to ran.log once."""
    ran, gate = tmp_path / "ran.log", tmp_path / "gate"
    return ran, gate, write_workload(tmp_path, f"""
name: held
tasks:
  - name: held
    command: while [ ! -e {gate} ]; do sleep 0.05; done; echo {{job_id}} >> {ran}
    count: {count}
""")


def test_a_run_killed_outright_is_resumed_with_its_worker(tmp_path):
    """kill -9 of ``hpc-edge run``: its MPI job lives on, finishes what it was running, and reports it
    to the resumed run, which listens where the killed one did. No payload runs twice, and the resume
    does not wait lost_after_s (120 s) for a worker that cannot find it."""
    ran, gate, workload = held_workload(tmp_path, 6)
    data = tmp_path / "run"
    proc = subprocess.Popen([*HPC_EDGE, "run", workload, "--ranks", "2", "--data-dir", data, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: scalar(data, "SELECT count(*) FROM jobs WHERE state='running'") == 2, 120, "2 jobs running")
        running = {j for j, row in jobs_by(data).items() if row["state"] == "running"}
        mpiexec = psutil.Process(int(query(data, "SELECT batch_id FROM workers")[0][0].split(":")[0]))
        proc.kill()
        proc.communicate(timeout=60)
        assert mpiexec.is_running(), "the MPI job outlives the run"
        gate.touch()  # the orphaned worker's payloads end now, with no tower to tell
        wait_for(lambda: ran.exists() and set(map(int, ran.read_text().split())) == running, 60,
                 "the orphaned worker's two payloads done")
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
    code, summary = run_json("run", workload, "--ranks", "2", "--data-dir", data, "--resume", timeout=100)
    assert code == 0, summary
    assert summary["resumed"] and summary["states"] == {"finished": 6}
    assert scalar(data, "SELECT count(*) FROM workers") == 1, "the same worker carried on"
    jobs = jobs_by(data)
    assert all(jobs[j]["dispatch"] == 1 for j in running), "a job the old worker finished was sent again"
    assert Counter(int(line) for line in ran.read_text().split()) == Counter({j: 1 for j in jobs})
    assert processes_under(data) == []


def test_a_run_whose_terminal_hangs_up_stops_as_ctrl_c_does(tmp_path):
    """An ssh connection that drops hangs up the run's terminal (SIGHUP). The run stops its MPI job
    and puts the running jobs back, as Ctrl-C does; before, SIGHUP killed it outright and left the MPI
    job running with no tower. Its terminal (a real pseudo-terminal) is gone: what it would still
    print must not get in the way; what goes into a file (--json > summary.json) still goes there."""
    ran, gate, workload = held_workload(tmp_path, 4)
    data, summary_file = tmp_path / "run", tmp_path / "summary.json"
    pid, terminal = pty.fork()  # the child's controlling terminal is this pseudo-terminal
    if pid == 0:
        try:  # stdout into a file, stderr (its logs) on the terminal
            os.dup2(os.open(summary_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.execv(HPC_EDGE[0], [*HPC_EDGE, "run", str(workload), "--ranks", "2", "--data-dir", str(data),
                                   "--json", "--log-level", "INFO"])
        finally:
            os._exit(127)

    def running_two():
        while select.select([terminal], [], [], 0)[0]:  # read what it draws, or it blocks on a full terminal
            os.read(terminal, 65536)
        return scalar(data, "SELECT count(*) FROM jobs WHERE state='running'") == 2

    try:
        wait_for(running_two, 120, "2 jobs running")
        os.close(terminal)  # the last hold on the terminal goes: the kernel hangs it up

        def ended():
            done, status = os.waitpid(pid, os.WNOHANG)
            return (status,) if done else None

        (status,) = wait_for(ended, 120, "the run to end")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert os.waitstatus_to_exitcode(status) == 129
    assert processes_under(data) == []
    assert Counter(j["state"] for j in jobs_by(data).values()) == {"activated": 4}
    assert "the terminal hung up (SIGHUP)" in (data / "tower.log").read_text()
    assert json.loads(summary_file.read_text())["states"] == {"activated": 4}

    gate.touch()
    code, summary = run_json("run", workload, "--ranks", "2", "--data-dir", data, "--resume")
    assert code == 0 and summary["states"] == {"finished": 4}, summary
    assert Counter(int(line) for line in ran.read_text().split()) == Counter({j: 1 for j in jobs_by(data)})
