"""What a payload leaves running when it ends: killed, even outside its process group, but not while
its own job still runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from tests.helpers import jobs_by, processes_under, run_json, wait_for, write_workload

pytestmark = pytest.mark.mpi

# a daemon of its own session (setsid), reparented at once (the subshell exits): no process group
# of the payload holds it, and its parent is not the payload
DAEMON = "(setsid sh -c 'echo $$ > {name}.pid; exec sleep 300' &); while [ ! -s {name}.pid ]; do sleep 0.01; done"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def test_daemons_left_by_payloads_end_with_their_jobs_and_no_sooner(tmp_path):
    workload = write_workload(tmp_path, f"""
tasks:
  - name: leaver
    command: {DAEMON.format(name="daemon")}
    count: 2
    max_attempts: 1
  - name: user        # needs its daemon for a while: it lives as long as its job
    command: {DAEMON.format(name="helper")}; sleep 3; kill -0 $(cat helper.pid) && echo alive > status.txt
    count: 1
    max_attempts: 1
    outputs: [status.txt]
""")
    data = tmp_path / "run"
    daemons: list[int] = []
    try:
        code, summary = run_json("run", workload, "--ranks", 2, "--data-dir", data)
        jobs = jobs_by(data).values()
        daemons = [int(p.read_text()) for j in jobs for p in Path(j["workdir"]).glob("*.pid")]

        assert code == 0 and summary["states"] == {"finished": 3}, summary
        assert len(daemons) == 3
        (user,) = [j for j in jobs if j["task"] == "user"]
        assert (Path(user["workdir"]) / "status.txt").read_text() == "alive\n"
        wait_for(lambda: all(gone(pid) for pid in daemons), 30, "the payloads' daemons to be killed")
        assert processes_under(data) == []
    finally:
        for pid in daemons:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
