"""Walltime as a resource, and kills: real workers, real signals."""

from __future__ import annotations

import json
import time

import psutil
import pytest

from tests.helpers import jobs_by, local_tower_site, processes_under, query, run_cli, run_json, wait_for, write_workload

pytestmark = [pytest.mark.mpi, pytest.mark.fault]


def test_allocation_end_preempts_without_burning_attempts(tmp_path):
    """Payloads outlive a short allocation: they come back preempted and finish on the next worker."""
    marks = tmp_path / "marks"
    marks.mkdir()
    workload = write_workload(tmp_path, f"""
name: long
tasks:
  - name: long
    # the first run of each job outlives the allocation; a re-run finds its mark and is quick
    command: if [ -e {marks}/{{job_id}} ]; then echo again > out.txt; else touch {marks}/{{job_id}}; sleep 300; fi
    count: 4
    walltime: 2s
    max_attempts: 1
    outputs: [out.txt]
""")
    data = tmp_path / "run"
    code, summary = run_json("run", workload, "--ranks", "2", "--cores-per-rank", "2", "--data-dir", data,
                             "--walltime", "8s", "--walltime-grace", "4s", "--walltime-margin", "1s")
    assert code == 0, summary
    assert summary["states"] == {"finished": 4}
    jobs = jobs_by(data)
    for job_id, job in jobs.items():
        assert job["attempt"] == 1 and job["dispatch"] == 2, job
        closed = query(data, "SELECT state, error_code, worker_id FROM attempts WHERE job_id=? ORDER BY dispatch",
                       (job_id,))
        assert closed[0][:2] == ("closed", 1020) and closed[1][:2] == ("finished", None)
        assert closed[0][2] != closed[1][2], "the re-run happened on another worker"
    workers = query(data, "SELECT count(*) FROM workers")[0][0]
    assert workers >= 2
    assert processes_under(data) == []


def test_kill_reaches_a_running_payload(tmp_path):
    home, env, site = local_tower_site(tmp_path)
    workload = write_workload(tmp_path, """
name: sleepy
tasks:
  - name: sleepy
    command: sleep 300 & sleep 300; wait
    count: 2
""")
    run_cli("tower", "start", "--site", site, env=env, check=True)
    try:
        run_cli("submit", workload, env=env, check=True)

        def running():
            rows = json.loads(run_cli("jobs", "--state", "running", "--json", env=env, check=True).stdout)
            return rows if len(rows) == 2 else None

        first = wait_for(running, 120, "both jobs running")[0]
        victims = [p for p in processes_under(home / "jobs" / "sleepy" / str(first["job_id"]))]
        assert len(victims) >= 2, "the payload shell and its sleeps"
        t0 = time.monotonic()
        out = run_cli("kill", first["job_id"], env=env, check=True)
        assert json.loads(out.stdout)["signalled"] == 1
        gone = wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in victims),
                        30, "the payload's process group to die")
        assert gone and time.monotonic() - t0 < 30
        job = wait_for(lambda: [j for j in json.loads(run_cli("jobs", "--state", "cancelled", "--json", env=env,
                                                                check=True).stdout)], 30, "job cancelled")[0]
        assert job["job_id"] == first["job_id"] and job["error_code"] == 1030
        # the other job runs on untouched
        assert [j["job_id"] for j in json.loads(run_cli("jobs", "--state", "running", "--json", env=env).stdout)] \
            == [j for j in (1, 2) if j != first["job_id"]]
        # cancel the worker: the batch job ends, its job returns to the pool
        worker = json.loads(run_cli("jobs", "--state", "running", "--json", env=env).stdout)[0]["worker_id"]
        out = run_cli("kill", "--worker", worker, env=env, check=True)
        assert json.loads(out.stdout)["cancelled"] is True
        wait_for(lambda: query(home, "SELECT state FROM workers WHERE worker_id=?", (worker,))[0][0]
                 in ("cancelled", "done"), 60, "worker gone")
    finally:
        run_cli("tower", "stop", env=env)
    assert processes_under(home) == []
