"""How a worker's ranks start MPI: settings of our own for MPI_Init, never passed on to the payloads,
and a rank that fails on its way up ends its MPI job at once."""

from __future__ import annotations

import os
from pathlib import Path

from hpc_edge.worker import MPI_START_ENV, quiet_mpi_start
from tests.helpers import jobs_by, run_cli, run_json, write_workload

ENV_WORKLOAD = "tasks:\n  - name: env\n    command: env\n    count: 2\n"


def payload_env(data: Path) -> list[dict[str, str]]:
    """Each payload's environment, as ``env`` printed it."""
    envs = []
    for job in jobs_by(data).values():
        out = (Path(job["workdir"]) / "payload.stdout").read_text()
        envs.append(dict(line.split("=", 1) for line in out.splitlines() if "=" in line))
    return envs


def test_the_start_up_settings_fill_in_only_what_the_site_left_unset():
    environ = {"UCX_MEM_EVENTS": "yes", "PATH": "/bin"}
    assert quiet_mpi_start(environ) == [name for name in MPI_START_ENV if name != "UCX_MEM_EVENTS"]
    assert environ == {**MPI_START_ENV, "UCX_MEM_EVENTS": "yes", "PATH": "/bin"}
    environ = {"PATH": "/bin"}
    assert quiet_mpi_start(environ) == list(MPI_START_ENV)
    assert environ == {"PATH": "/bin", **MPI_START_ENV}


def test_payloads_get_the_environment_the_site_gave_not_the_ranks_start_up_settings(tmp_path, monkeypatch):
    for name in MPI_START_ENV:
        monkeypatch.delenv(name, raising=False)
    code, summary = run_json("run", write_workload(tmp_path, ENV_WORKLOAD), "--ranks", 2,
                             "--data-dir", tmp_path / "run")
    assert code == 0 and summary["states"] == {"finished": 2}, summary
    envs = payload_env(tmp_path / "run")
    assert len(envs) == 2 and all(env["HPC_EDGE_JOB_ID"] for env in envs)  # we read real environments
    for env in envs:
        assert not set(MPI_START_ENV) & set(env), f"a start-up setting reached a payload: {sorted(env)}"


def test_a_payload_using_mpi_is_an_mpi_job_of_its_own_not_a_rank_of_the_worker(tmp_path):
    # mpiexec gives each rank PMI_FD, PMI_RANK, PMI_SIZE ...: a payload that inherited them took itself
    # for rank 0 or 1 of the worker's job, and its MPI_Init failed writing to a PMI descriptor it did
    # not have ("PMIU_write error ... Bad file descriptor", exit 15)
    workload = write_workload(tmp_path, """
tasks:
  - name: singleton
    command: python -c "from mpi4py import MPI; c = MPI.COMM_WORLD; print(c.Get_rank(), c.Get_size())"
    count: 2
    max_attempts: 1
  - name: own-mpiexec
    command: mpiexec -n 2 python -c "from mpi4py import MPI; c = MPI.COMM_WORLD; n = c.allreduce(1); c.Get_rank() or print(n)"
    count: 1
    max_attempts: 1
  - name: env
    command: env
    count: 1
    max_attempts: 1
""")
    code, summary = run_json("run", workload, "--ranks", 2, "--data-dir", tmp_path / "run")

    assert code == 0 and summary["states"] == {"finished": 4}, summary
    out: dict[str, list[str]] = {}
    for job in jobs_by(tmp_path / "run").values():
        out.setdefault(job["task"], []).append((Path(job["workdir"]) / "payload.stdout").read_text())
    assert out["singleton"] == ["0 1\n", "0 1\n"]
    assert out["own-mpiexec"] == ["2\n"]  # rank 0 heard from both ranks of its own mpiexec
    names = {line.split("=", 1)[0] for line in out["env"][0].splitlines()}
    assert "HPC_EDGE_JOB_ID" in names and not {n for n in names if n.startswith(("PMI_", "HYDI_"))}


def test_a_setting_the_site_made_reaches_the_payloads_unchanged(tmp_path):
    code, summary = run_json("run", write_workload(tmp_path, ENV_WORKLOAD), "--ranks", 2,
                             "--data-dir", tmp_path / "run", env={"UCX_MEM_EVENTS": "yes"})
    assert code == 0 and summary["states"] == {"finished": 2}, summary
    assert [env.get("UCX_MEM_EVENTS") for env in payload_env(tmp_path / "run")] == ["yes", "yes"]


# Loaded by every Python started with this directory on PYTHONPATH: on MPI rank 1 only (hydra sets
# PMI_RANK), importing the executor fails, as a module broken on one node would.
BREAK_RANK_1 = """\
import os, sys
class _Breaker:
    def find_spec(self, name, path=None, target=None):
        if name == "hpc_edge.executor" and os.environ.get("PMI_RANK") == "1":
            raise ImportError("cannot import on this node (test)")
        return None
sys.meta_path.insert(0, _Breaker())
"""


def test_a_rank_that_fails_on_its_way_up_ends_the_run_with_the_reason_not_a_hang(tmp_path):
    breaker = tmp_path / "breaker"
    breaker.mkdir()
    (breaker / "sitecustomize.py").write_text(BREAK_RANK_1)
    path = os.pathsep.join(p for p in (str(breaker), os.environ.get("PYTHONPATH", "")) if p)
    wl = write_workload(tmp_path, "tasks:\n  - name: t\n    command: /bin/true\n    count: 4\n")
    # before, rank 0 waited for rank 1 in MPI, and the run with it, until the tower cancelled the
    # worker (start_timeout_s, 600 s by default)
    proc = run_cli("run", wl, "--ranks", 2, "--data-dir", tmp_path / "run", env={"PYTHONPATH": path},
                   timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "died before reaching the tower" in proc.stderr, proc.stderr[-2000:]
    errs = sorted((tmp_path / "run" / "workers").glob("*/*.err"))
    assert errs, "no worker log"
    log = errs[-1].read_text()
    assert "ImportError: cannot import on this node (test)" in log and "MPI_Abort" in log, log[-2000:]
