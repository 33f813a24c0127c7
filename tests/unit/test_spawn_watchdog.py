"""How a rank starts payloads (posix_spawn) and how its watchdog kills them when the rank is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hpc_edge.spawn import Spawner
from hpc_edge.watchdog import Watchdog


@pytest.fixture
def spawner():
    s = Spawner("out.txt", "err.txt")
    yield s
    s.close()


def run(spawner, argv, cwd, env=None) -> int:
    pid = spawner.spawn(argv, str(cwd), env or dict(os.environ))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_payload_runs_in_its_directory_with_its_env_and_files(spawner, tmp_path):
    env = {**os.environ, "GREETING": "hi"}
    code = run(spawner, ["/bin/sh", "-c", 'pwd; echo "$GREETING"; echo oops >&2; exit 3'], tmp_path, env)
    assert code == 3
    assert (tmp_path / "out.txt").read_text().split() == [str(tmp_path), "hi"]
    assert (tmp_path / "err.txt").read_text() == "oops\n"
    assert os.getcwd() != str(tmp_path)  # the rank is back where it was


def test_program_is_looked_up_on_the_payloads_path_not_the_ranks(spawner, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "only-here"
    tool.write_text("#!/bin/sh\necho found\n")
    tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}
    assert run(spawner, ["only-here"], tmp_path, env) == 0
    assert (tmp_path / "out.txt").read_text() == "found\n"
    with pytest.raises(FileNotFoundError):
        spawner.spawn(["only-here"], str(tmp_path), dict(os.environ))


def test_new_session_default_sigpipe_and_no_inherited_descriptors(spawner, tmp_path):
    r, w0 = os.pipe()
    w = os.dup2(w0, 100, inheritable=True)  # as a library that forgot O_CLOEXEC would leave it
    os.close(w0)
    try:
        pid = spawner.spawn(["/bin/sh", "-c", "cut -d' ' -f6 /proc/$$/stat; grep SigIgn /proc/self/status; "
                             "ls /proc/self/fd"], str(tmp_path), dict(os.environ))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(r)
        os.close(w)
    lines = (tmp_path / "out.txt").read_text().split()
    assert int(lines[0]) == pid, "a payload leads its own session"
    ignored = int(lines[2], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), "SIGPIPE must be back to its default in payloads"
    assert "100" not in lines[3:], "an inheritable descriptor of the rank leaked into a payload"


def test_watchdog_kills_guarded_groups_when_the_rank_is_gone(tmp_path):
    wd = Watchdog(slots=2)  # three payloads: the table has to grow while the watchdog runs
    payloads = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(4)]
    try:
        for proc in payloads:
            wd.started(proc.pid)
        wd.ended(payloads[3].pid)  # reaped by the rank: no longer guarded
        assert wd.guarded == {p.pid for p in payloads[:3]}
        wd.proc.stdin.close()  # what a rank's death does to the pipe
        assert wd.proc.wait(timeout=30) == 0
        for proc in payloads[:3]:
            assert proc.wait(timeout=30) == -signal.SIGKILL
        assert payloads[3].poll() is None, "a payload the rank had reaped must not be touched"
    finally:
        for proc in payloads:
            proc.kill()
            proc.wait()


def test_watchdog_removes_guarded_files_once_the_rank_is_gone(tmp_path):
    from hpc_edge.watchdog import shared_memory_files

    segment = tmp_path / "segment-of-a-killed-rank"
    segment.write_bytes(b"x")
    wd = Watchdog()
    wd.guard_files([str(segment), str(tmp_path / "already-removed-by-MPI_Finalize")])
    wd.proc.stdin.close()  # the rank is gone
    assert wd.proc.wait(timeout=30) == 0
    assert not segment.exists()
    assert all(p.startswith("/dev/shm/") for p in shared_memory_files())


def test_watchdog_removes_the_ranks_scratch_tree_once_the_rank_is_gone(tmp_path):
    scratch = tmp_path / "hpc-edge-w-rank1"
    (scratch / "12.1" / "deep").mkdir(parents=True)
    (scratch / "12.1" / "deep" / "partial.out").write_bytes(b"x" * 1000)
    other = tmp_path / "not-guarded"
    other.mkdir()
    wd = Watchdog()
    wd.guard_tree(str(scratch))
    wd.proc.stdin.close()  # the rank is gone
    assert wd.proc.wait(timeout=30) == 0
    assert not scratch.exists()
    assert other.exists()


def _segment(tag: str, made: list[str], size: int = 4096, prefix: str = "mpich_shm_") -> str:
    path = f"/dev/shm/{prefix}hpcedgetest_{os.getpid()}_{tag}"
    made.append(path)
    with open(path, "wb") as f:
        f.write(b"\0" * size)
    return path


def _mapped_by_a_live_process(path: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", (
        "import mmap, sys\n"
        f"f = open({path!r}, 'r+b'); m = mmap.mmap(f.fileno(), 4096)\n"
        "print('mapped', flush=True); sys.stdin.read()")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "mapped"
    return proc


def test_watchdog_sweeps_mpi_segments_nobody_named_nor_maps_once_the_rank_is_gone():
    """A rank killed during MPI's start-up never names its segment: its watchdog, started before
    MPI_Init and told when, removes this user's MPI segments made since then that no process maps,
    and leaves one a live job maps, older ones, and other files."""
    from hpc_edge.watchdog import stray_segments

    made: list[str] = []
    holder = None
    try:
        older = _segment("older", made)
        older_ctime = os.stat(older).st_ctime_ns
        while True:  # the next files must carry a later (coarse-clock) time than the older one
            newer = _segment("stray", made)
            if os.stat(newer).st_ctime_ns > older_ctime:
                break
        since = os.stat(newer).st_ctime_ns
        transport = _segment("stray", made, prefix="ucx_shm_posix_")  # UCX's, under MPICH here
        live = _segment("live", made)
        other = f"/dev/shm/hpcedgetest_not_mpi_{os.getpid()}"
        made.append(other)
        open(other, "wb").close()
        holder = _mapped_by_a_live_process(live)

        assert [p for p in stray_segments(since) if "hpcedgetest" in p] == sorted([newer, transport])
        wd = Watchdog()
        wd.sweep_segments_since(since + 1_000_000_000)  # it looks a second further back itself
        wd.proc.stdin.close()  # the rank is gone
        assert wd.proc.wait(timeout=30) == 0
        assert not os.path.exists(newer) and not os.path.exists(transport)
        assert os.path.exists(live) and os.path.exists(older) and os.path.exists(other)
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait()
        for path in made:
            if os.path.exists(path):
                os.unlink(path)
