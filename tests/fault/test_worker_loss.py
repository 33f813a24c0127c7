"""kill -9 of a whole MPI job: its payloads die with it, and its jobs finish on another worker."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter

import psutil
import pytest

from hpc_edge.watchdog import shared_memory_files
from tests.helpers import HPC_EDGE, jobs_by, processes_under, query, scalar, wait_for, write_workload

pytestmark = [pytest.mark.mpi, pytest.mark.fault]


@pytest.mark.parametrize("on_scratch", [False, True], ids=["shared-dir", "scratch"])
def test_killed_mpi_job_leaves_no_payload_and_loses_no_job(tmp_path, on_scratch):
    ran = tmp_path / "ran.log"
    marks = tmp_path / "marks"
    marks.mkdir()
    workload = write_workload(tmp_path, f"""
name: lost
tasks:
  - name: lost
    # the first run of each job waits long enough to be caught by the kill; a re-run is quick
    command: if [ -e {marks}/{{job_id}} ]; then echo {{job_id}} >> {ran}; else touch {marks}/{{job_id}}; sleep 300; fi
    count: 6
    max_attempts: 1
""")
    data = tmp_path / "run"
    scratch = tmp_path / "node-local"
    proc = subprocess.Popen([*HPC_EDGE, "run", workload, "--ranks", "2", "--cores-per-rank", "3", "--data-dir", data,
                             "--json", *(["--scratch", str(scratch)] if on_scratch else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: scalar(data, "SELECT count(*) FROM jobs WHERE state='running'") == 6, 120, "6 payloads running")
        payloads = [psutil.Process(pid) for (pid,) in query(data, "SELECT pid FROM jobs")]
        (batch_id,) = query(data, "SELECT batch_id FROM workers WHERE worker_id='local-00001'")[0]
        mpiexec = psutil.Process(int(batch_id.split(":")[0]))
        ranks = [p for p in mpiexec.children(recursive=True) if "hpc_edge worker" in " ".join(p.cmdline())]
        segments = {f for r in ranks for f in shared_memory_files(f"/proc/{r.pid}/maps")}
        assert segments, "MPICH's ranks on one node share memory through /dev/shm"
        os.killpg(mpiexec.pid, signal.SIGKILL)  # mpiexec and every rank, at once
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in payloads), 60,
                 "the dead ranks' payloads killed by their watchdogs")
        wait_for(lambda: not any(os.path.exists(f) for f in segments), 60,
                 "the killed MPI job's shared memory removed by the watchdogs")
        if on_scratch:
            wait_for(lambda: not any(p.name.startswith("hpc-edge-local-00001-") for p in scratch.iterdir()), 60,
                     "the killed ranks' scratch directories removed by the watchdogs")
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    jobs = jobs_by(data)
    assert all(j["state"] == "finished" and j["attempt"] == 1 and j["dispatch"] == 2 for j in jobs.values())
    assert {w for (w,) in query(data, "SELECT worker_id FROM attempts WHERE state='finished'")} == {"local-00002"}
    assert query(data, "SELECT DISTINCT error_code FROM attempts WHERE state='closed'") == [(1040,)]
    assert Counter(int(x) for x in ran.read_text().split()) == Counter({j: 1 for j in jobs})
    assert processes_under(data) == []
    if on_scratch:
        assert processes_under(scratch) == []
        assert list(scratch.iterdir()) == []
