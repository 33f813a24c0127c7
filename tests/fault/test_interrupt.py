"""Ctrl-C on ``hpc-edge run``: no orphan processes, and ``--resume`` finishes without re-running."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter

import pytest

from tests.helpers import HPC_EDGE, jobs_by, processes_under, run_json, scalar, wait_for, write_workload

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
