"""The rank's per-payload path in compiled code (hpc_edge/_fastrun.c) against the same path in Python
(HPC_EDGE_PURE_PYTHON=1): the same payloads, run by each, end the same way, with the same files left
and the same environment seen. Real payload processes; no MPI."""

from __future__ import annotations

import os
import time

import pytest

from hpc_edge import fastpath as fastpath_module
from hpc_edge.errors import ErrorCode
from hpc_edge.executor import Executor
from hpc_edge.protocol import JobSpec

# what the payloads do; by job id
COMMANDS = {
    1: "/bin/true",
    2: "exit 3",
    3: "echo to stdout; echo to stderr >&2",
    4: "echo result > out.txt",                       # outputs: out.txt
    5: "true",                                        # outputs: missing.txt (never made)
    6: "echo '{\"exitCode\": 0, \"exitMsg\": \"ok\"}' > jobReport.json",
    7: "echo '{\"exitCode\": 2065, \"exitMsg\": \"bad input\"}' > jobReport.json",
    8: "kill -SEGV $$",
    9: 'echo "$HPC_EDGE_JOB_ID $HPC_EDGE_CORES $OMP_NUM_THREADS $FROM_JOB $FROM_SITE $(pwd)" > env.txt',
    10: "no-such-program-anywhere --flag",
    11: "sleep 300 & echo started",                  # what it leaves in its group ends with it
    12: "read line; echo \"[$line]\"",                # stdin is /dev/null
    13: "./relative-program",                          # relative to its directory, not on PATH
    14: "./not-executable",                            # found, but execve fails (EACCES) ...
    15: "./no-interpreter",                            # ... or its interpreter is missing (ENOENT)
    16: "cat /proc/self/status > status.txt",          # the signal mask and ignored signals it got
}
OUTPUTS = {4: ["out.txt"], 5: ["missing.txt"], 16: ["status.txt"]}
# programs in a payload's own directory: (name, text, mode)
PROGRAMS = {13: ("relative-program", "#!/bin/sh\necho relative\n", 0o755),
            14: ("not-executable", "#!/bin/sh\necho never\n", 0o644),
            15: ("no-interpreter", "#!/no/such/interpreter\n", 0o755)}
ENV = {9: {"FROM_JOB": "job-value"}}


def specs(tmp_path) -> list[JobSpec]:
    return [JobSpec(job_id=i, task_id=1, attempt=1, dispatch=1, command=cmd, cores=1, memory_mb=0, walltime_s=60,
                    workdir=str(tmp_path / "jobs" / str(i)), outputs=OUTPUTS.get(i, []), env=ENV.get(i, {}))
            for i, cmd in COMMANDS.items()]


def run(tmp_path, compiled: bool, scratch: bool) -> tuple[dict, dict]:
    """Every job run by one executor; (end events by job id, files left by job id)."""
    if scratch:
        (tmp_path / "scratch").mkdir()
    ex = Executor(rank=0, cores=2, memory_mb=1000, guard=False, compiled=compiled,
                  scratch=str(tmp_path / "scratch") if scratch else None)
    ex.base_env = {**ex.base_env, "FROM_SITE": "site-value", "OMP_NUM_THREADS": "99"}
    ex.install_sigchld_wakeup()
    for i, (name, text, mode) in PROGRAMS.items():  # a relative program must be where the payload runs
        where = tmp_path / "scratch" / f"{i}.1" if scratch else tmp_path / "jobs" / str(i)
        where.mkdir(parents=True)
        (where / name).write_text(text)
        (where / name).chmod(mode)
    try:
        ex.add(specs(tmp_path))
        ended, deadline = {}, time.monotonic() + 60
        while len(ended) < len(COMMANDS):
            assert time.monotonic() < deadline, f"only {sorted(ended)} ended"
            for e in ex.step(0.01):
                if e.state != "running":
                    ended[e.job_id] = e
            if len(ended) < len(COMMANDS) and not ex.waited:
                ex.wait(0.05)
    finally:
        ex.hard_kill_all()
        ex.close()
    files = {i: sorted(p.name for p in (tmp_path / "jobs" / str(i)).iterdir())
             for i in COMMANDS if (tmp_path / "jobs" / str(i)).is_dir()}
    return ended, files


def outcome(e) -> tuple:
    return (e.state, e.exit_code, e.signal, e.error_code, [f.name for f in e.files])


@pytest.fixture(params=[False, True], ids=["in-place", "scratch"])
def both(request, tmp_path_factory):
    """Each path's (end events, files left, root directory), and whether payloads ran on scratch."""
    assert fastpath_module._fastrun is not None, (
        "hpc_edge/_fastrun.c was not built: pip install needs a C compiler (gcc or cc)")
    scratch = request.param
    got = {}
    for name, compiled in (("compiled", True), ("python", False)):
        root = tmp_path_factory.mktemp(name)
        got[name] = (*run(root, compiled, scratch), root)
    return got, scratch


def test_the_compiled_path_ends_every_payload_as_the_python_path_does(both):
    got, scratch = both
    (compiled, compiled_files, _), (python, python_files, _) = got["compiled"], got["python"]

    assert {i: outcome(e) for i, e in compiled.items()} == {i: outcome(e) for i, e in python.items()}
    assert compiled_files == python_files
    # and what they are, so that both cannot be wrong the same way
    o = {i: outcome(e) for i, e in compiled.items()}
    assert o[1] == o[9] == o[12] == o[13] == ("finished", 0, None, None, [])
    assert o[2] == ("failed", 3, None, ErrorCode.NONZERO_EXIT, [])
    assert o[4] == ("finished", 0, None, None, ["out.txt"])
    assert o[5][3] == ErrorCode.OUTPUT_MISSING
    assert o[6][:4] == ("finished", 0, None, None)
    assert o[7][3] == 2065  # a plugin's code from its job report
    assert o[8][:4] == ("failed", None, 11, ErrorCode.KILLED_BY_SIGNAL)
    assert o[10][3] == ErrorCode.START_FAILED and "no-such-program-anywhere" in compiled[10].error_diag
    assert o[14][3] == o[15][3] == ErrorCode.START_FAILED
    assert "Permission denied" in compiled[14].error_diag and "No such file" in compiled[15].error_diag
    assert o[16] == ("finished", 0, None, None, ["status.txt"])
    assert compiled[1].cpu_s is not None and compiled[1].max_rss_kb > 0 and compiled[1].wall_s > 0
    assert compiled[1].start_time <= compiled[1].end_time
    # on scratch, a job that finished with empty logs leaves no directory at all; the logs that say
    # something, the outputs and, for a failure, everything come back
    if scratch:
        assert 1 not in compiled_files and 9 not in compiled_files
        assert compiled_files[12] == compiled_files[13] == ["payload.stdout"]
        assert compiled_files[3] == ["payload.stderr", "payload.stdout"]
        assert compiled_files[4] == ["out.txt"]
    else:
        assert compiled_files[1] == ["payload.stderr", "payload.stdout"]


def test_payloads_see_the_same_environment_directory_and_input(both):
    got, scratch = both
    seen = {}
    for name in ("compiled", "python"):
        root = got[name][2]
        if scratch:  # nothing was declared to keep: the payloads' files went with their scratch directory
            assert not (root / "jobs" / "9").exists()
            continue
        seen[name] = (root / "jobs" / "9" / "env.txt").read_text().split()
        assert (root / "jobs" / "12" / "payload.stdout").read_text() == "[]\n"
        assert (root / "jobs" / "13" / "payload.stdout").read_text() == "relative\n"
    for name in ("compiled", "python"):  # no signal blocked; SIGPIPE (13) and SIGXFSZ (25) not ignored
        status = dict(line.split(":\t", 1) for line in
                      (got[name][2] / "jobs" / "16" / "status.txt").read_text().splitlines())
        assert int(status["SigBlk"], 16) == 0, name
        assert int(status["SigIgn"], 16) & (1 << 12 | 1 << 24) == 0, name
    if not scratch:
        # the job's id and cores; the job's own variable; the site's; OMP_NUM_THREADS from the job's
        # cores, not the site's 99
        assert seen["compiled"][:5] == seen["python"][:5] == ["9", "1", "1", "job-value", "site-value"]
        assert seen["compiled"][5] == str(got["compiled"][2] / "jobs" / "9")


def test_the_compiled_path_keeps_to_the_cores_and_the_watchdog_guards_what_it_started(tmp_path):
    ex = Executor(rank=0, cores=3, memory_mb=1000, guard=True, compiled=True)
    ex.install_sigchld_wakeup()
    try:
        # a 2-core job first, then 1-core ones: first fit takes the 2-core job and one 1-core job
        wide = JobSpec(job_id=1, task_id=1, attempt=1, dispatch=1, command="sleep 30", cores=2, memory_mb=0,
                       walltime_s=60, workdir=str(tmp_path / "1"))
        narrow = [JobSpec(job_id=i, task_id=1, attempt=1, dispatch=1, command="sleep 30", cores=1, memory_mb=0,
                          walltime_s=60, workdir=str(tmp_path / str(i))) for i in (2, 3, 4)]
        ex.add([wide, *narrow])
        started = [e for e in ex.step(0.2) if e.state == "running"]

        assert sorted(e.job_id for e in started) == [1, 2]
        assert ex.free_cores == 0 and [s.job_id for s in ex.queue] == [3, 4]
        assert ex.waited  # it waited for a payload to end (none did) instead of returning at once
        assert ex.watchdog.guarded == {e.pid for e in started} == set(ex.running)
        ex.kill({2}, ErrorCode.KILLED_BY_USER, "test")
        deadline, ended = time.monotonic() + 30, []
        while not ended:
            assert time.monotonic() < deadline
            ended = [e for e in ex.step(0.2) if e.state != "running"]
        assert [(e.job_id, e.state) for e in ended] == [(2, "cancelled")]
        # the freed core went to the next job, and the table follows
        assert {r.spec.job_id for r in ex.running.values()} == {1, 3}
        assert ex.watchdog.guarded == set(ex.running)
    finally:
        ex.hard_kill_all()
        ex.close()


def test_the_compiled_path_keeps_to_the_memory(tmp_path):
    ex = Executor(rank=0, cores=4, memory_mb=1000, guard=False, compiled=True)
    ex.install_sigchld_wakeup()
    try:
        big, small, other = (JobSpec(job_id=i, task_id=1, attempt=1, dispatch=1, command="sleep 30", cores=1,
                                     memory_mb=mb, walltime_s=60, workdir=str(tmp_path / str(i)))
                             for i, mb in ((1, 800), (2, 300), (3, 200)))
        ex.add([big, small, other])
        started = [e.job_id for e in ex.step(0.1) if e.state == "running"]

        # 800 + 300 is over the rank's 1000 MB: the 300 MB job keeps its place, the 200 MB one fits
        assert sorted(started) == [1, 3] and [s.job_id for s in ex.queue] == [2]
        assert ex.free_memory_mb == 0 and ex.free_cores == 2
        ex.kill({1}, ErrorCode.KILLED_BY_USER, "test")
        deadline, seen = time.monotonic() + 30, []
        while 2 not in seen:
            assert time.monotonic() < deadline
            seen += [e.job_id for e in ex.step(0.2) if e.state == "running"]
        assert ex.free_memory_mb == 500 and not ex.queue
    finally:
        ex.hard_kill_all()
        ex.close()


def test_a_queue_changed_between_calls_is_read_again(tmp_path):
    """The compiled path keeps the queue's head prepared from one call to the next; a job killed
    while queued, and jobs added behind it, must not be mistaken for what it kept."""
    ex = Executor(rank=0, cores=1, memory_mb=1000, guard=False, compiled=True)
    ex.install_sigchld_wakeup()

    def spec(i):
        return JobSpec(job_id=i, task_id=1, attempt=1, dispatch=1, command="sleep 30", cores=1, memory_mb=0,
                       walltime_s=60, workdir=str(tmp_path / str(i)))

    def run_until_started() -> int:
        """The job that starts next, once its process is seen running in that job's own directory."""
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline
            started = [e for e in ex.step(0.2) if e.state == "running"]
            if started:
                assert len(started) == 1
                e = started[0]
                assert os.readlink(f"/proc/{e.pid}/cwd") == str(tmp_path / str(e.job_id))
                return e.job_id

    try:
        ex.add([spec(i) for i in (1, 2, 3, 4)])
        order = [run_until_started()]  # 1 runs; 2, 3 and 4 stay queued, prepared
        cancelled = ex.kill({3}, ErrorCode.KILLED_BY_USER, "test")
        assert [(e.job_id, e.state) for e in cancelled] == [(3, "cancelled")]
        ex.add([spec(5)])
        for _ in range(3):  # each running job killed in turn: the next queued one starts
            ex.kill({order[-1]}, ErrorCode.KILLED_BY_USER, "test")
            order.append(run_until_started())
        assert order == [1, 2, 4, 5]
        assert not ex.queue
    finally:
        ex.hard_kill_all()
        ex.close()
