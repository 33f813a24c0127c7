"""A full disk under the tower's store (a quota, a full filesystem): the run stops with one line,
leaves no process, its store stays whole, and ``--resume`` finishes once there is room.

The full disk is a real one: a 1 MiB tmpfs mounted for the test, which needs root."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import psutil
import pytest

from tests.helpers import jobs_by, processes_under, query, run_cli, run_json, write_workload

pytestmark = [
    pytest.mark.mpi, pytest.mark.fault,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs as a full disk"),
]


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_the_run_cleanly_and_resume_finishes(tmp_path, small_disk):
    workload = write_workload(tmp_path, "name: full\ntasks:\n  - {name: t, command: 'true', count: 5000}\n")
    data, scratch = small_disk / "run", tmp_path / "scratch"
    args = ("run", workload, "--ranks", "2", "--data-dir", data, "--scratch", scratch)
    stopped = run_cli(*args, "--json", timeout=120)
    assert stopped.returncode == 2, stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("hpc-edge: error:")]
    assert errors == [f"hpc-edge: error: cannot write the store {data / 'store.sqlite'}: database or disk is full; "
                      "everything committed before is kept. Free space (or raise the quota), then carry on: "
                      "hpc-edge run ... --resume, or hpc-edge tower start"], stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert processes_under(data) == [] and processes_under(scratch) == []
    db = sqlite3.connect(f"file:{data / 'store.sqlite'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    before = jobs_by(data)
    assert len(before) == 5000, "the workload was stored before the disk filled"
    finished_before = {j for j, row in before.items() if row["state"] == "finished"}
    assert len(finished_before) < 5000

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    code, summary = run_json(*args, "--resume", timeout=240)
    assert code == 0, summary
    assert summary["resumed"] and summary["states"] == {"finished": 5000}
    after = jobs_by(data)
    assert all(after[j]["dispatch"] == 1 for j in finished_before), "a job finished before was run again"
    assert processes_under(data) == []


def test_resume_stores_a_workload_the_first_run_could_not(tmp_path, small_disk):
    """The disk fills while the workload is stored: nothing of it is, and --resume runs all of it."""
    (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 256 * 1024))  # room for the store, not its tasks
    workload = write_workload(tmp_path, "name: big\ntasks:\n  - {name: t, command: 'true', count: 3000}\n")
    data = small_disk / "run"
    args = ("run", workload, "--ranks", "2", "--data-dir", data)
    stopped = run_cli(*args, "--json", timeout=120)
    assert stopped.returncode == 2 and "cannot write the store" in stopped.stderr, stopped.stderr
    assert processes_under(data) == []
    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    code, summary = run_json(*args, "--resume", timeout=240)
    assert code == 0, summary
    assert summary["states"] == {"finished": 3000}


def test_a_submit_the_store_cannot_take_gets_the_reason_and_stops_the_tower(tmp_path, small_disk):
    """A daemon tower (no queues: no worker) whose disk fills as a submit is stored: the submit gets
    the reason, the tower stops, and once there is room a restarted tower takes the submit."""
    home = small_disk / "tower"
    site = write_workload(tmp_path, "queues: []\n", "site.yaml")
    run_cli("tower", "start", "--site", site, "--data-dir", home, check=True)
    pid = int((home / "tower.pid").read_text())
    try:
        (small_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - 256 * 1024))  # room for the store, not 3000 jobs
        workload = write_workload(tmp_path, "name: big\ntasks:\n  - {name: t, command: 'true', count: 3000}\n")
        refused = run_cli("submit", workload, "--data-dir", home)
        assert refused.returncode == 2 and "cannot write the store" in refused.stderr, refused.stderr
        psutil.Process(pid).wait(60)  # the tower stops by itself
    finally:
        if psutil.pid_exists(pid):
            run_cli("tower", "stop", "--data-dir", home)
    assert "cannot write the store" in (home / "tower.log").read_text()
    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    run_cli("tower", "start", "--site", site, "--data-dir", home, check=True)
    try:
        run_cli("submit", workload, "--data-dir", home, check=True)
        assert query(home, "SELECT count(*) FROM jobs") == [(3000,)]
    finally:
        run_cli("tower", "stop", "--data-dir", home)
