"""Failure classes for real: a payload killed -9, a stopped (looping) payload, limits, jobReport.json,
retry policy and hand retries."""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest

from tests.helpers import jobs_by, local_tower_site, processes_under, query, run_cli, run_json, scalar, wait_for, write_workload

pytestmark = [pytest.mark.mpi, pytest.mark.fault]


def test_limits_and_job_reports(tmp_path):
    workload = write_workload(tmp_path, """
name: limits
tasks:
  - name: chatty        # writes 3 MB to stdout against a 1 MB limit
    command: head -c 3000000 /dev/zero; sleep 30
    count: 1
    max_attempts: 1
    limits: {max_output_mb: 1, check_every: 0.2}
  - name: greedy        # holds ~200 MB against a 50 MB limit
    command: python -c "import time; b = bytearray(200 * 2**20); time.sleep(30)"
    count: 1
    max_attempts: 1
    limits: {memory_mb: 50, check_every: 0.2}
  - name: hoarder       # fills its work directory past 2 MB
    command: head -c 5000000 /dev/zero > big.bin; sleep 30
    count: 1
    max_attempts: 1
    limits: {max_workdir_mb: 2, check_every: 0.2}
  - name: hung          # looks alive (CPU, output) but never ends: its walltime limit ends it
    command: while true; do echo tick; sleep 0.1; done
    count: 1
    max_attempts: 1
    limits: {max_walltime: 2s, looping: 1m}
  - name: reporter      # exits 0 but reports a failure in jobReport.json
    command: |-
      echo '{"exitCode": 65, "exitMsg": "Athena crashed", "nEvents": 0}' > jobReport.json
    count: 1
    max_attempts: 1
  - name: good-report
    command: |-
      echo '{"exitCode": 0, "exitMsg": "OK", "nEvents": 10}' > jobReport.json
    count: 1
  - name: picky          # exit codes are retried, missing outputs are not
    command: test -e {workload_dir}/never || exit 2
    count: 1
    max_attempts: 3
    retry_on: [missing_output]
""")
    data = tmp_path / "run"
    code, summary = run_json("run", workload, "--ranks", "2", "--data-dir", data)
    assert code == 1
    jobs = {j["task"]: j for j in jobs_by(data).values()}
    assert (jobs["chatty"]["state"], jobs["chatty"]["error_code"]) == ("failed", 1006)
    assert (jobs["greedy"]["state"], jobs["greedy"]["error_code"]) == ("failed", 1008)
    assert "over the job's limit of 50 MB" in jobs["greedy"]["error_diag"]
    assert (jobs["hoarder"]["state"], jobs["hoarder"]["error_code"]) == ("failed", 1007)
    assert (jobs["hung"]["state"], jobs["hung"]["error_code"]) == ("failed", 1012)
    assert jobs["hung"]["wall_s"] >= 2.0
    assert "over the job's walltime limit of 2 s" in jobs["hung"]["error_diag"]
    assert (jobs["reporter"]["state"], jobs["reporter"]["error_code"], jobs["reporter"]["exit_code"]) == \
        ("failed", 1009, 0)
    assert jobs["reporter"]["error_diag"] == "jobReport.json: exitCode 65: Athena crashed"
    assert json.loads(jobs["reporter"]["report"])["exitMsg"] == "Athena crashed"
    assert jobs["good-report"]["state"] == "finished"
    assert json.loads(jobs["good-report"]["report"])["nEvents"] == 10
    assert (jobs["picky"]["state"], jobs["picky"]["attempt"], jobs["picky"]["exit_code"]) == ("failed", 1, 2)
    assert processes_under(data) == []


def test_killed_and_stopped_payloads(tmp_path):
    home, env, site = local_tower_site(tmp_path)
    workload = write_workload(tmp_path, """
name: victims
tasks:
  - name: victim
    command: sleep 300
    count: 2
    max_attempts: 2
    limits: {looping: 3s, check_every: 0.5}
""")
    run_cli("tower", "start", "--site", site, env=env, check=True)
    try:
        run_cli("submit", workload, env=env, check=True)
        wait_for(lambda: scalar(home, "SELECT count(*) FROM jobs WHERE state='running'") == 2, 120, "both running")
        (a, pid_a), (b, pid_b) = query(home, "SELECT job_id, pid FROM jobs ORDER BY job_id")
        os.kill(pid_a, signal.SIGKILL)      # a payload dies: its attempt fails, it is retried
        os.killpg(pid_b, signal.SIGSTOP)    # a payload stops: the looping check kills it
        wait_for(lambda: scalar(home, "SELECT count(*) FROM attempts WHERE state='closed'") == 2, 60,
                 "both first attempts closed")
        closed = dict(query(home, "SELECT job_id, error_code FROM attempts WHERE state='closed'"))
        assert closed == {a: 1002, b: 1005}
        diag = query(home, "SELECT error_diag FROM attempts WHERE job_id=?", (a,))[0][0]
        assert diag == "killed by signal 9 (SIGKILL)"
        assert not psutil.pid_exists(pid_b) or psutil.Process(pid_b).status() == psutil.STATUS_ZOMBIE
        # both run again as attempt 2
        wait_for(lambda: query(home, "SELECT attempt, state FROM jobs ORDER BY job_id") ==
                 [(2, "running"), (2, "running")], 60, "second attempts running")
        # a hand retry of a cancelled job
        run_cli("kill", a, env=env, check=True)
        wait_for(lambda: query(home, "SELECT state FROM jobs WHERE job_id=?", (a,))[0][0] == "cancelled", 60,
                 "job cancelled")
        out = json.loads(run_cli("retry", a, env=env, check=True).stdout)
        assert out == {"retried": [a], "skipped": []}
        wait_for(lambda: query(home, "SELECT attempt, state FROM jobs WHERE job_id=?", (a,))[0] == (3, "running"),
                 60, "retried job running as attempt 3")
        assert json.loads(run_cli("retry", b, env=env, check=True).stdout)["skipped"] == [b]
    finally:
        run_cli("tower", "stop", env=env)
    assert processes_under(home) == []
