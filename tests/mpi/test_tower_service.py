"""``hpc-edge tower start|status|stop`` with ``submit``, ``status``, ``jobs``, ``logs`` against it."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    EXAMPLES,
    HPC_EDGE,
    local_tower_site,
    processes_under,
    query,
    run_cli,
    wait_for,
    write_workload,
)

pytestmark = pytest.mark.mpi


def test_tower_daemon_serves_the_cli(tmp_path):
    home = tmp_path / "tower"
    site = write_workload(tmp_path, """
name: test-site
tower: {idle_drain_s: 2, heartbeat_s: 2}
provision_interval_s: 0.5
queues:
  - {name: local, launcher: local, ranks_per_node: 2, cores_per_rank: 1}
""", "site.yaml")
    workload = write_workload(tmp_path, """
name: talk
tasks:
  - name: talk
    command: echo "out {index}"; echo "err {index}" >&2; test {index} -ne 3
    count: 12
    max_attempts: 1
""")
    env = {"HPC_EDGE_HOME": str(home)}
    started = run_cli("tower", "start", "--site", site, env=env, check=True)
    assert "tower started" in started.stdout
    try:
        second = run_cli("tower", "start", env=env)
        pid = int((home / "tower.pid").read_text())
        assert second.returncode == 2 and f"in use by another tower (pid {pid})" in second.stderr
        assert int((home / "tower.pid").read_text()) == pid  # the second start left the first one's files
        run_cli("submit", workload, env=env, check=True)

        def settled():
            st = json.loads(run_cli("status", "--json", env=env, check=True).stdout)
            states = st["tasks"][0]["states"]
            return st if states.get("finished", 0) + states.get("failed", 0) == 12 else None

        st = wait_for(settled, 120, "all 12 jobs final")
        assert st["tasks"][0]["states"] == {"finished": 11, "failed": 1}
        failed = json.loads(run_cli("jobs", "--state", "failed", "--json", env=env, check=True).stdout)
        assert [(j["idx"], j["exit_code"], j["error_code"]) for j in failed] == [(3, 1, 1001)]
        job_id = failed[0]["job_id"]
        assert run_cli("logs", job_id, env=env, check=True).stdout == "out 3\n"
        assert run_cli("logs", job_id, "--stderr", env=env, check=True).stdout == "err 3\n"
        table = run_cli("jobs", "--state", "failed", env={**env, "COLUMNS": "200"}, check=True).stdout
        assert "exited with code 1" in table
        # the same, as a Prometheus scraper sees it
        api = json.loads((home / "tower.json").read_text())["api"]
        with urllib.request.urlopen(f"{api}/metrics", timeout=30) as got:
            assert got.headers["Content-Type"].startswith("text/plain; version=")  # the exposition format
            families = {f.name: f for f in text_string_to_metric_families(got.read().decode())}
        jobs = {s.labels["state"]: s.value for s in families["hpc_edge_jobs"].samples if s.labels["task"] == "talk"}
        assert jobs == {"activated": 0, "sent": 0, "running": 0, "finished": 11, "failed": 1, "cancelled": 0}
        kinds = {s.labels["kind"]: s.value for s in families["hpc_edge_relay_messages"].samples}
        assert kinds["updates"] >= 1 and kinds["requests"] >= 1
        assert families["hpc_edge_workers"].samples and families["hpc_edge_store_writable"].samples[0].value == 1
        assert families["process_resident_memory_bytes"].samples[0].value > 0
        # the workers, the latest first submitted last; a limit that is no positive integer is refused
        with urllib.request.urlopen(f"{api}/api/workers", timeout=30) as got:
            workers = json.loads(got.read())
        with urllib.request.urlopen(f"{api}/api/workers?limit=1", timeout=30) as got:
            assert [w["worker_id"] for w in json.loads(got.read())] == [workers[-1]["worker_id"]]
        for bad_limit in ("0", "-1", "x"):
            with pytest.raises(urllib.error.HTTPError) as refused_limit:
                urllib.request.urlopen(f"{api}/api/workers?limit={bad_limit}", timeout=30)
            assert refused_limit.value.code == 400
            assert "positive integer" in json.loads(refused_limit.value.read())["error"]
        # a bad workload is refused with its line, and the tower keeps serving
        bad = write_workload(tmp_path, "name: x\ntasks:\n  - name: y\n    comand: true\n    count: 1\n", "bad.yaml")
        refused = run_cli("submit", bad, env=env)
        assert refused.returncode == 2 and "bad.yaml:4" in refused.stderr and "comand" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert json.loads(run_cli("status", "--json", env=env, check=True).stdout)["tasks"][0]["jobs"] == 12
    finally:
        stopped = run_cli("tower", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert processes_under(home) == []
    assert "no tower is running" in run_cli("status", env=env).stderr


def test_run_refuses_bad_input_without_traceback(tmp_path):
    missing = run_cli("run", tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "nope.yaml: cannot read" in missing.stderr
    typo = write_workload(tmp_path, "name: t\ntasks:\n  - name: a\n    command: 'true'\n    count: 2\n    cores_per_job: 2\n")
    out = run_cli("run", typo)
    assert out.returncode == 2
    assert "workload.yaml:6: tasks.0.cores_per_job: unknown key 'cores_per_job'" in out.stderr
    assert "Traceback" not in out.stderr
    rerun = write_workload(tmp_path, "name: r\ntasks:\n  - {name: a, command: 'true', count: 2}\n", "r.yaml")
    data = tmp_path / "d"
    assert run_cli("run", rerun, "--data-dir", data, "--quiet").returncode == 0
    again = run_cli("run", rerun, "--data-dir", data, "--quiet")
    assert again.returncode == 2 and "--resume" in again.stderr and "--fresh" in again.stderr
    # a file where the data directory should be: one line, for run and tower start alike
    (tmp_path / "afile").write_text("mine\n")
    for cmd in (["run", rerun], ["tower", "start"]):
        refused = run_cli(*cmd, "--data-dir", tmp_path / "afile")
        assert refused.returncode == 2 and "afile is not a directory" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert (tmp_path / "afile").read_text() == "mine\n"


def test_a_fresh_run_logs_into_its_own_tower_log(tmp_path):
    """--fresh clears the earlier run, then the new run's log goes to a tower.log that is there."""
    wl = write_workload(tmp_path, "name: r\ntasks:\n  - {name: a, command: 'true', count: 2}\n")
    data = tmp_path / "d"
    run_cli("run", wl, "--data-dir", data, "--quiet", check=True)
    first = (data / "tower.log").read_text()
    run_cli("run", wl, "--data-dir", data, "--quiet", "--fresh", check=True)
    second = (data / "tower.log").read_text()
    assert "started worker" in first and "started worker" in second  # each run logs its worker's start
    assert first not in second  # the earlier run's log went with it


def test_keys_are_private(tmp_path):
    run_cli("keys", "init", "--data-dir", tmp_path, check=True)
    secrets = sorted(p.name for p in (tmp_path / "keys").glob("*.key_secret"))
    assert secrets == ["client.key_secret", "server.key_secret"]  # the loop below must have work to do
    for name in secrets:
        assert (tmp_path / "keys" / name).stat().st_mode & 0o077 == 0, name


def test_a_run_whose_workload_cannot_be_stored_stops_the_worker_it_sent_out(tmp_path, monkeypatch):
    # `hpc-edge run` sends its worker out before storing the workload (their start-ups overlap); if
    # storing fails, that worker must not be left running, and the error must reach the user.
    # (tests/fault/test_full_disk.py does this with a real full disk, as root.)
    import sqlite3

    from control_tower.run import RunOptions, run_workload
    from control_tower.store import Store, StoreWriteError
    from control_tower.workload import load_workload

    workload = load_workload(write_workload(tmp_path, "name: w\ntasks:\n  - {name: t, command: sleep 30, count: 4}\n"))
    data = tmp_path / "data"

    def full_disk(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "add_task", full_disk)
    with pytest.raises(StoreWriteError, match="cannot write the store .*: database or disk is full"):
        run_workload(workload, RunOptions(data_dir=data, progress=False), None)
    assert processes_under(data) == []
    assert query(data, "SELECT count(*) FROM tasks") == [(0,)]
    assert [w for (w,) in query(data, "SELECT worker_id FROM workers")] == ["local-00001"]


def test_a_submit_or_a_retry_brings_a_worker_at_once_not_at_the_next_cycle(tmp_path):
    # the provisioner's cycle is 10 minutes: each worker here must come from the submit or the retry
    home, env, site = local_tower_site(tmp_path, tower="{idle_drain_s: 1, heartbeat_s: 2}", provision_interval_s=600)
    workload = write_workload(tmp_path, """
name: once
tasks:
  - name: t
    command: test {index} -ne 2
    count: 4
    max_attempts: 1
""")
    run_cli("tower", "start", "--site", site, env=env, check=True)
    try:
        assert query(home, "SELECT count(*) FROM workers") == [(0,)]  # no work yet: no worker
        run_cli("submit", workload, env=env, check=True)

        def totals():
            return json.loads(run_cli("status", "--json", env=env, check=True).stdout)["totals"]

        wait_for(lambda: totals().get("finished") == 3 and totals().get("failed") == 1, 120, "3 finished, 1 failed")
        # the worker drains once idle and leaves; the retried job needs a new one
        wait_for(lambda: query(home, "SELECT state FROM workers") == [("done",)], 120, "the first worker done")
        (job_id,) = query(home, "SELECT job_id FROM jobs WHERE state='failed'")[0]
        run_cli("retry", job_id, env=env, check=True)
        wait_for(lambda: query(home, "SELECT attempt, state FROM jobs WHERE job_id=?", (job_id,)) == [(2, "failed")],
                 120, "the retried job's second attempt")
        assert [s for (s,) in query(home, "SELECT state FROM workers ORDER BY worker_id")][:1] == ["done"]
        assert query(home, "SELECT count(*) FROM workers") == [(2,)]
    finally:
        stopped = run_cli("tower", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr


def test_one_tower_per_data_directory(tmp_path):
    """While ``hpc-edge run`` serves a directory, neither a daemon tower nor a second run (even with
    --fresh) can take it: they are refused with the holder's pid and touch nothing; once the run has
    ended the directory is free. (A tower killed with SIGKILL frees it too, while its MPI job lives
    on: tests/fault/test_tower_crash.py restarts one so.)"""
    data = tmp_path / "data"
    gate = tmp_path / "gate"
    workload = write_workload(tmp_path, f"""
name: held
tasks:
  - name: wait
    command: while [ ! -e {gate} ]; do sleep 0.05; done
    count: 2
    walltime: 5m
""")
    run = subprocess.Popen([*HPC_EDGE, "run", str(workload), "--ranks", "2", "--json", "--data-dir", str(data)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (data / "tower.json").exists() and
                 json.loads((data / "tower.json").read_text())["pid"] == run.pid, 60, "the run's tower.json")
        wait_for(lambda: query(data, "SELECT count(*) FROM jobs WHERE state='running'")[0][0] == 2, 120,
                 "both jobs running")
        info = (data / "tower.json").read_text()

        daemon = run_cli("tower", "start", "--data-dir", data)
        assert daemon.returncode == 2, daemon.stderr
        assert f"{data} is in use by another tower (pid {run.pid})" in daemon.stderr
        again = run_cli("run", workload, "--ranks", "2", "--fresh", "--data-dir", data)
        assert again.returncode == 2, again.stderr
        assert f"in use by another tower (pid {run.pid})" in again.stderr and "Traceback" not in again.stderr
        # neither touched the run's files: its store, its tower.json, no pidfile of a daemon
        assert (data / "tower.json").read_text() == info and not (data / "tower.pid").exists()
        assert query(data, "SELECT name FROM tasks") == [("wait",)]
        assert query(data, "SELECT count(*) FROM jobs WHERE state='running'")[0][0] == 2
        gate.touch()
        out, err = run.communicate(timeout=120)
    finally:
        gate.touch()
        if (data / "tower.pid").exists():  # a daemon that should have been refused: not left running
            run_cli("tower", "stop", "--data-dir", data)
        if run.poll() is None:
            run.terminate()
            run.wait(60)
    assert run.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["states"] == {"finished": 2}
    # the run is over: the directory is free for the next tower
    started = run_cli("tower", "start", "--data-dir", data)
    try:
        assert started.returncode == 0, started.stderr
    finally:
        run_cli("tower", "stop", "--data-dir", data)
    assert processes_under(data) == []
