"""Real batch jobs on the local Slurm cluster (scripts/slurm-single-node.sh up).

Rendered scripts go through the real sbatch/squeue/sacct/scancel and slurm-wlm-torque's
qsub/qstat/qdel, ranks are real MPI processes (mpi4py over the venv's MPICH, started by
``srun --mpi=pmi2`` or ``mpiexec``). Every wait polls the batch state or a file with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launchers import BatchState, WorkerSpec, get_launcher
from tests.helpers import mpi_segments, remove_orphan_segments

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")

# Each rank writes rank.<n> (what it saw) and, in "wait" mode, waits for SIGUSR1 (usr1.<n>).
RANK_PROGRAM = r"""
import json, os, signal, socket, sys, time
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
got = []
signal.signal(signal.SIGUSR1, lambda signo, frame: got.append(signo))
info = {"rank": rank, "size": size, "cwd": os.getcwd(), "token": os.environ.get("EDGE_TEST_TOKEN"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"), "worker": os.environ.get("HPC_EDGE_WORKER_ID"),
        "end": os.environ.get("HPC_EDGE_ALLOCATION_END")}
with open(f"rank.{rank}.tmp", "w") as f:
    json.dump(info, f)
os.rename(f"rank.{rank}.tmp", f"rank.{rank}")
if sys.argv[1] == "wait":
    deadline = time.time() + float(sys.argv[2])
    while not got and time.time() < deadline:
        time.sleep(0.05)
    if got:
        open(f"usr1.{rank}", "w").close()
comm.Barrier()
"""


@pytest.fixture
def cleanup():
    """Batch ids to scancel after the test, so a failing test leaves no waiting job behind; then the
    shared-memory files of MPI ranks that Slurm killed (this test's rank program has no watchdog:
    the product's workers do), which MPICH names in /dev/shm and removes only in MPI_Finalize."""
    before = mpi_segments()
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and subprocess.run(
                ["squeue", "-h", "-j", ",".join(ids)], capture_output=True, text=True, timeout=30).stdout.strip():
            time.sleep(0.2)
    remove_orphan_segments(before)


def rank_spec(workdir: Path, ranks: int = 4, mode: str = "done", wait_s: int = 240, **changes) -> WorkerSpec:
    fields = dict(worker_id=f"t{int(time.time() * 1000) % 10**8}", workdir=workdir, ranks_per_node=ranks,
                  command=[sys.executable, "-c", RANK_PROGRAM, mode, str(wait_s)], walltime_s=300,
                  env={"EDGE_TEST_TOKEN": "a b; c"}, job_name="hpc-edge-test")
    fields.update(changes)
    return WorkerSpec(**fields)


def wait_for(what: str, check, timeout: float, on_timeout=lambda: ""):
    """Poll ``check()`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}. {on_timeout()}")


def wait_state(launcher, batch_id: str, wanted: set[BatchState], spec: WorkerSpec, timeout: float = 120):
    seen = []

    def check():
        state = launcher.status([batch_id])[batch_id]
        if not seen or seen[-1] is not state:
            seen.append(state)
        return state if state in wanted else None

    return wait_for(f"job {batch_id} to reach {sorted(s.value for s in wanted)}", check, timeout,
                    lambda: f"states seen: {[s.value for s in seen]}; stderr: {read(spec.stderr_path)}")


def read(path: Path) -> str:
    return path.read_text()[-2000:] if path.exists() else "(none)"


def rank_files(workdir: Path, prefix: str, ranks: int):
    return lambda: len(list(workdir.glob(f"{prefix}.[0-9]*"))) >= ranks


def rank_infos(workdir: Path) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in workdir.glob("rank.[0-9]*")), key=lambda i: i["rank"])


def test_slurm_runs_four_real_mpi_ranks_to_done(slurm_cluster, tmp_path, cleanup):
    launcher = get_launcher("slurm")
    spec = rank_spec(tmp_path / "w")
    batch_id = launcher.submit(spec)
    cleanup.append(batch_id)
    assert batch_id.isdigit()
    assert wait_state(launcher, batch_id, {BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED}, spec) \
        is BatchState.DONE, read(spec.stderr_path)
    infos = rank_infos(spec.workdir)
    assert [i["rank"] for i in infos] == [0, 1, 2, 3], read(spec.stderr_path)
    assert {i["size"] for i in infos} == {4}  # one MPI world of 4, not 4 singletons
    assert {i["slurm_job"] for i in infos} == {batch_id}
    assert {i["cwd"] for i in infos} == {str(spec.workdir)}
    assert {i["token"] for i in infos} == {"a b; c"}
    assert {i["worker"] for i in infos} == {spec.worker_id}
    assert all(0 < int(i["end"]) - time.time() <= 300 for i in infos)
    # squeue still knows the job; the job-completion log (sacct -c) does too, for when it forgets
    assert launcher.accounting_states([batch_id]) == {batch_id: BatchState.DONE}


def test_slurm_cancel_of_a_running_job_is_noticed_as_cancelled(slurm_cluster, tmp_path, cleanup):
    launcher = get_launcher("slurm")
    spec = rank_spec(tmp_path / "w", mode="wait")
    batch_id = launcher.submit(spec)
    cleanup.append(batch_id)
    wait_state(launcher, batch_id, {BatchState.RUNNING}, spec)
    wait_for("all 4 ranks to start", rank_files(spec.workdir, "rank", 4), 60, lambda: read(spec.stderr_path))
    launcher.cancel([batch_id])
    assert wait_state(launcher, batch_id, {BatchState.CANCELLED, BatchState.DONE, BatchState.FAILED}, spec, 60) \
        is BatchState.CANCELLED
    assert not list(spec.workdir.glob("usr1.*"))


def test_slurm_warning_signal_reaches_every_srun_rank_before_the_end(slurm_cluster, tmp_path, cleanup):
    # 2-minute limit, warning 100 s before it: Slurm sends USR1 to the job step (the ranks) ~20 s in
    # (its timer may fire up to 60 s early); each rank records it and the job ends normally.
    launcher = get_launcher("slurm")
    spec = rank_spec(tmp_path / "w", mode="wait", walltime_s=120, warning_signal_s=100, wait_s=110)
    script = launcher.render_script(spec)
    assert "#SBATCH --signal=USR1@100\n" in script
    batch_id = launcher.submit(spec)
    cleanup.append(batch_id)
    wait_for("SIGUSR1 in all 4 ranks", rank_files(spec.workdir, "usr1", 4), 110,
             lambda: f"state {launcher.status([batch_id])}; stderr: {read(spec.stderr_path)}")
    assert wait_state(launcher, batch_id, {BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED}, spec, 60) \
        is BatchState.DONE


def test_slurm_with_mpiexec_forwards_the_batch_shell_signal_to_the_ranks(slurm_cluster, tmp_path, cleanup):
    # "--signal=B:USR1@N" signals only the batch shell; `scancel --batch --signal=USR1` does exactly that
    # now, so the script's trap must pass it to mpiexec, which passes it to every rank.
    launcher = get_launcher("slurm", mpi_launch=MPIEXEC)
    spec = rank_spec(tmp_path / "w", mode="wait")
    assert "#SBATCH --signal=B:USR1@90\n" in launcher.render_script(spec)
    batch_id = launcher.submit(spec)
    cleanup.append(batch_id)
    wait_for("all 4 ranks to start", rank_files(spec.workdir, "rank", 4), 120, lambda: read(spec.stderr_path))
    subprocess.run(["scancel", "--batch", "--signal=USR1", batch_id], check=True, timeout=30)
    wait_for("SIGUSR1 forwarded to all 4 ranks", rank_files(spec.workdir, "usr1", 4), 60,
             lambda: read(spec.stderr_path))
    assert wait_state(launcher, batch_id, {BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED}, spec, 60) \
        is BatchState.DONE
    assert [i["size"] for i in rank_infos(spec.workdir)] == [4, 4, 4, 4]


def test_pbs_adapter_drives_slurm_torque_wrappers(slurm_cluster, tmp_path, cleanup):
    launcher = get_launcher("pbs", flavor="torque", mpi_launch=MPIEXEC)
    done_spec = rank_spec(tmp_path / "done", ranks=2)
    done_id = launcher.submit(done_spec)
    cleanup.append(done_id)
    assert done_id.isdigit()  # the wrapper's qsub prints the bare Slurm id
    assert wait_state(launcher, done_id, {BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED}, done_spec) \
        is BatchState.DONE
    assert [i["size"] for i in rank_infos(done_spec.workdir)] == [2, 2]
    assert done_spec.stdout_path.exists()  # -o/-e on qsub's command line won over the wrapper's default

    wait_spec = rank_spec(tmp_path / "wait", ranks=2, mode="wait")
    wait_id = launcher.submit(wait_spec)
    cleanup.append(wait_id)
    wait_state(launcher, wait_id, {BatchState.RUNNING}, wait_spec)
    launcher.cancel([wait_id])
    assert wait_state(launcher, wait_id, {BatchState.CANCELLED, BatchState.DONE, BatchState.FAILED}, wait_spec, 60) \
        is BatchState.CANCELLED
    assert launcher.status(["999999"]) == {"999999": BatchState.UNKNOWN}  # qstat exits 153 for it
