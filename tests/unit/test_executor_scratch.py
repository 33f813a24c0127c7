"""A rank's executor with a scratch directory: payloads run there, what is kept moves to the job's
directory, and a move that cannot be done fails the job with a stage-out error (nothing is lost
silently). Real payload processes; no MPI."""

from __future__ import annotations

import time

import pytest

from hpc_edge.errors import ErrorCode
from hpc_edge.executor import Executor
from hpc_edge.protocol import JobSpec


def spec(tmp_path, job_id: int, command: str, outputs=()) -> JobSpec:
    return JobSpec(job_id=job_id, task_id=1, attempt=1, dispatch=1, command=command, cores=1, memory_mb=0,
                   walltime_s=60, workdir=str(tmp_path / "jobs" / "t" / str(job_id) / "try1"), outputs=list(outputs))


def run_to_end(ex: Executor, specs: list[JobSpec], timeout: float = 60) -> dict[int, object]:
    """Run the specs; the end events by job id (waiting on the executor's SIGCHLD wake-up)."""
    ex.install_sigchld_wakeup()
    ex.add(specs)
    ended, deadline = {}, time.monotonic() + timeout
    while len(ended) < len(specs):
        assert time.monotonic() < deadline, f"only {sorted(ended)} ended"
        for e in ex.step():
            if e.state != "running":
                ended[e.job_id] = e
        if len(ended) < len(specs):
            ex.wait(0.5)
    return ended


@pytest.fixture
def ex(tmp_path):
    executor = Executor(rank=0, cores=2, memory_mb=1000, guard=False, scratch=str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    yield executor
    executor.hard_kill_all()
    executor.close()


def test_outputs_and_logs_move_to_the_job_directory_and_scratch_is_emptied(ex, tmp_path):
    ended = run_to_end(ex, [spec(tmp_path, 1, "pwd > out.txt; echo hi; touch stray", outputs=["out.txt"])])

    assert ended[1].state == "finished"
    job_dir = tmp_path / "jobs" / "t" / "1" / "try1"
    assert sorted(p.name for p in job_dir.iterdir()) == ["out.txt", "payload.stdout"]
    assert (job_dir / "out.txt").read_text().strip() == str(tmp_path / "scratch" / "1.1")
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_job_whose_files_cannot_be_moved_fails_with_a_stage_out_error(ex, tmp_path):
    # the job's directory cannot be made: a file stands where its parent should be
    (tmp_path / "jobs" / "t").mkdir(parents=True)
    (tmp_path / "jobs" / "t" / "2").write_text("in the way")
    ended = run_to_end(ex, [spec(tmp_path, 2, "echo result > out.txt", outputs=["out.txt"])])

    e = ended[2]
    assert (e.state, e.exit_code, e.error_code) == ("failed", 0, ErrorCode.STAGEOUT_FAILED)
    assert str(tmp_path / "jobs" / "t" / "2" / "try1") in e.error_diag
    assert [f.name for f in e.files] == ["out.txt"]
    # the output is not thrown away: it stays on scratch, where the diagnostic says
    assert (tmp_path / "scratch" / "2.1" / "out.txt").read_text() == "result\n"
    assert str(tmp_path / "scratch" / "2.1") in e.error_diag


def test_a_job_that_leaves_nothing_worth_keeping_leaves_no_trace(ex, tmp_path):
    # empty logs, no outputs: no job directory is made, and scratch is emptied; also when the payload
    # removed one of its own logs or left another directory behind
    ended = run_to_end(ex, [spec(tmp_path, 3, "true"), spec(tmp_path, 4, "rm payload.stderr"),
                            spec(tmp_path, 5, "mkdir -p a/b")])

    assert {e.state for e in ended.values()} == {"finished"}
    assert not (tmp_path / "jobs").exists()
    assert list((tmp_path / "scratch").iterdir()) == []
