"""kill -9 of the tower mid-run: relays keep their payloads going, reconnect to the restarted tower,
resend what was not acknowledged, and every job finishes exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter

import psutil
import pytest

from tests.helpers import local_tower_site, processes_under, query, run_cli, wait_for, write_workload

pytestmark = [pytest.mark.mpi, pytest.mark.fault]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tower_killed_and_restarted_loses_and_repeats_nothing(tmp_path):
    home = tmp_path / "tower"
    env = {"HPC_EDGE_HOME": str(home)}
    ran = tmp_path / "ran.log"
    site = write_workload(tmp_path, f"""
tower: {{bind: "tcp://127.0.0.1:{free_port()}", heartbeat_s: 2, idle_drain_s: 30, lost_after_s: 120}}
provision_interval_s: 0.5
queues: [{{name: local, launcher: local, ranks_per_node: 2, cores_per_rank: 1}}]
""", "site.yaml")
    workload = write_workload(tmp_path, f"""
name: many
tasks:
  - name: many
    command: sleep 0.01; echo {{job_id}} >> {ran}
    count: 1200
    walltime: 1m
""")
    run_cli("tower", "start", "--site", site, env=env, check=True)
    try:
        run_cli("submit", workload, env=env, check=True)

        def finished() -> int:
            return json.loads(run_cli("status", "--json", env=env, check=True).stdout)["totals"].get("finished", 0)

        wait_for(lambda: finished() >= 250, 120, "a fifth of the jobs finished")
        pid = int((home / "tower.pid").read_text())
        worker = query(home, "SELECT batch_id FROM workers WHERE state='running'")[0][0]
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(30)
        mpiexec = psutil.Process(int(worker.split(":")[0]))
        assert mpiexec.is_running(), "the MPI job outlives its tower"
        # its lock file stays, but the lock went with the process (and the MPI job never held it)
        assert (home / "tower.lock").exists()
        run_cli("tower", "start", "--site", site, env=env, check=True)
        wait_for(lambda: finished() == 1200, 240, "all 1200 jobs finished after the restart")
        assert query(home, "SELECT count(*) FROM workers")[0][0] == 1, "the same worker carried on"
    finally:
        run_cli("tower", "stop", env=env)
    # exactly once, by the store ...
    assert query(home, "SELECT state, count(*) FROM jobs GROUP BY state") == [("finished", 1200)]
    per_job = dict(query(home, "SELECT job_id, count(*) FROM attempts WHERE state='finished' GROUP BY job_id"))
    assert len(per_job) == 1200 and set(per_job.values()) == {1}
    # ... and by the payloads' own output
    runs = Counter(int(line) for line in ran.read_text().split())
    assert len(runs) == 1200 and set(runs.values()) == {1}
    assert processes_under(home) == []


def test_relays_of_a_tower_that_never_returns_stop_themselves(tmp_path):
    """After lost_after_s the tower would have handed the work to others: the orphans stop, payloads too."""
    home, env, site = local_tower_site(tmp_path, "{heartbeat_s: 1, lost_after_s: 6}")
    workload = write_workload(tmp_path, "name: w\ntasks: [{name: t, command: sleep 300, count: 2, walltime: 10m}]\n")
    run_cli("tower", "start", "--site", site, env=env, check=True)
    run_cli("submit", workload, env=env, check=True)
    wait_for(lambda: query(home, "SELECT count(*) FROM jobs WHERE state='running'")[0][0] == 2, 120, "2 running")
    mpiexec = psutil.Process(int(query(home, "SELECT batch_id FROM workers")[0][0].split(":")[0]))
    payloads = [psutil.Process(pid) for (pid,) in query(home, "SELECT pid FROM jobs")]
    tower = int((home / "tower.pid").read_text())
    os.kill(tower, signal.SIGKILL)
    psutil.Process(tower).wait(30)
    mpiexec.wait(120)  # ends by itself once its relay gives up (6 s of silence, then its payloads' grace)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in payloads)
    assert processes_under(home) == []


def test_a_worker_that_never_reaches_a_tower_stops_by_itself(tmp_path):
    """A worker whose tower is gone before it starts (killed after the submit, a store that filled):
    no tower will cancel it, so after --start-timeout-s without an answer it ends itself."""
    from launchers.local import find_mpiexec

    worker = subprocess.Popen(
        [find_mpiexec(), "-n", "2", sys.executable, "-m", "hpc_edge", "worker", "--tower",
         f"tcp://127.0.0.1:{free_port()}", "--worker-id", "w-alone", "--start-timeout-s", "3"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert re.search(r"no tower answered in the \d+ s since the start", err), err
    assert processes_under(tmp_path) == []
