"""A payload that exits 0 while its worker is being stopped: finished if it did all a finished job
does (it must not run again), preempted otherwise (no attempt used). Real payload processes."""

from __future__ import annotations

import time

import psutil
import pytest

from hpc_edge.errors import ErrorCode
from hpc_edge.executor import Executor
from hpc_edge.protocol import JobLimits, JobSpec
from tests.helpers import wait_for


def spec(tmp_path, job_id: int, command: str, outputs=()) -> JobSpec:
    return JobSpec(job_id=job_id, task_id=1, attempt=1, dispatch=1, command=command, cores=1, memory_mb=0,
                   walltime_s=60, workdir=str(tmp_path / "jobs" / str(job_id)), outputs=list(outputs))


@pytest.fixture
def ex():
    executor = Executor(rank=0, cores=2, memory_mb=1000, guard=False)
    executor.install_sigchld_wakeup()
    yield executor
    executor.hard_kill_all()
    executor.close()


def step_until(ex: Executor, done, timeout: float = 60) -> list:
    events, deadline = [], time.monotonic() + timeout
    while not done(events):
        assert time.monotonic() < deadline, events
        events += ex.step()
        if not done(events):
            ex.wait(0.2)
    return events


def wait_for_file(path) -> None:
    """The payload says its signal handling is in place by making a file."""
    wait_for(path.exists, 60, f"{path} to appear", interval=0.01)


def ended(events) -> dict:
    return {e.job_id: e for e in events if e.state != "running"}


def test_a_payload_that_completes_as_its_worker_stops_is_finished(ex, tmp_path):
    # it ignores SIGTERM and finishes its work once told to go on (a file), after the stop request
    s = spec(tmp_path, 1, "trap '' TERM; touch armed; while [ ! -e go ]; do sleep 0.05; done; echo done > out.txt",
             outputs=["out.txt"])
    ex.add([s])
    step_until(ex, lambda ev: any(e.state == "running" for e in ev))
    wait_for_file(tmp_path / "jobs" / "1" / "armed")
    ex.kill({1}, ErrorCode.WORKER_STOPPED, "worker terminated (SIGTERM)")
    (tmp_path / "jobs" / "1" / "go").touch()
    e = ended(step_until(ex, lambda ev: 1 in ended(ev)))[1]

    assert (e.state, e.exit_code, e.error_code) == ("finished", 0, None)
    assert [f.name for f in e.files] == ["out.txt"]


def test_a_payload_that_exits_0_on_sigterm_without_its_outputs_is_preempted(ex, tmp_path):
    s = spec(tmp_path, 2, "trap 'exit 0' TERM; touch armed; while true; do sleep 0.05; done", outputs=["out.txt"])
    ex.add([s])
    step_until(ex, lambda ev: any(e.state == "running" for e in ev))
    wait_for_file(tmp_path / "jobs" / "2" / "armed")
    ex.kill({2}, ErrorCode.WALLTIME_PREEMPTED, "allocation reaches its walltime")
    e = ended(step_until(ex, lambda ev: 2 in ended(ev)))[2]

    assert (e.state, e.exit_code, e.error_code) == ("preempted", 0, ErrorCode.WALLTIME_PREEMPTED)


def test_a_user_kill_stays_a_cancellation_even_if_the_payload_exits_0(ex, tmp_path):
    s = spec(tmp_path, 3, "trap 'exit 0' TERM; touch armed; while true; do sleep 0.05; done")
    ex.add([s])
    step_until(ex, lambda ev: any(e.state == "running" for e in ev))
    wait_for_file(tmp_path / "jobs" / "3" / "armed")
    ex.kill({3}, ErrorCode.KILLED_BY_USER, "killed by user")
    e = ended(step_until(ex, lambda ev: 3 in ended(ev)))[3]

    assert (e.state, e.error_code) == ("cancelled", ErrorCode.KILLED_BY_USER)


def test_what_a_payload_leaves_running_ends_with_it(ex, tmp_path):
    # "cmd &" in a payload: the background process would go on holding the core that the next payload
    # is given (and outlive the worker on a machine without a batch system to clean up)
    ex.add([spec(tmp_path, 1, "sleep 300 & echo $! > bg.pid; echo started")])
    e = ended(step_until(ex, lambda ev: 1 in ended(ev)))[1]
    assert (e.state, e.exit_code) == ("finished", 0)
    stray = int((tmp_path / "jobs" / "1" / "bg.pid").read_text())
    wait_for(lambda: gone(stray), 30, "the payload's background process to be killed")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def test_a_walltime_limit_is_checked_when_it_falls_due_not_at_the_next_periodic_check(ex, tmp_path):
    limited = spec(tmp_path, 1, "sleep 60")._replace(limits=JobLimits(max_walltime_s=3.0, check_s=10.0))
    ex.add([limited])
    step_until(ex, lambda ev: any(e.state == "running" for e in ev))  # its step had the first look
    (run,) = ex.running.values()
    assert run.next_check == run.start_mono + 3.0
