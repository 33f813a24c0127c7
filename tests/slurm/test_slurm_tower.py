"""The whole path on a real Slurm cluster: tower -> sbatch -> srun'd 4-rank MPI job -> payloads -> results."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import query, run_cli, wait_for, write_workload

pytestmark = pytest.mark.slurm


def site(tmp_path, max_running: int = 1, max_queued: int = 1):
    return write_workload(tmp_path, f"""
name: slurm-test
tower: {{heartbeat_s: 2, idle_drain_s: 5, lost_after_s: 60}}
provision_interval_s: 1
queues:
  - name: debug
    launcher: slurm
    partition: debug
    nodes: 1
    ranks_per_node: 4
    cores_per_rank: 1
    walltime: 10m
    max_running: {max_running}
    max_queued: {max_queued}
    keep_worker_dirs: logs
""", "site.yaml")


def tower(tmp_path, site_path):
    env = {"HPC_EDGE_HOME": str(tmp_path / "tower")}
    run_cli("tower", "start", "--site", site_path, env=env, check=True)
    return env


def states(env) -> dict:
    return json.loads(run_cli("status", "--json", env=env, check=True).stdout)["totals"]


def test_payloads_run_on_four_slurm_ranks(slurm_cluster, tmp_path):
    env = tower(tmp_path, site(tmp_path))
    home = tmp_path / "tower"
    try:
        workload = write_workload(tmp_path, """
name: on-slurm
tasks:
  - name: t
    command: echo "$SLURM_JOB_ID $HPC_EDGE_RANK" > where.txt
    count: 40
    walltime: 1m
    outputs: [where.txt]
  - name: mpi
    command: python -c "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_size())" > size.txt
    count: 4
    walltime: 1m
    outputs: [size.txt]
""")
        run_cli("submit", workload, env=env, check=True)
        wait_for(lambda: states(env).get("finished") == 44, 180, "44 jobs finished on Slurm")
        (batch_id, state), = query(home, "SELECT batch_id, state FROM workers")
        assert batch_id.isdigit()
        ranks = {r for (r,) in query(home, "SELECT DISTINCT rank FROM jobs")}
        assert ranks == {0, 1, 2, 3}
        for (workdir, rank) in query(home, "SELECT j.workdir, j.rank FROM jobs j JOIN tasks t USING (task_id) "
                                           "WHERE t.name = 't'"):
            assert open(f"{workdir}/where.txt").read() == f"{batch_id} {rank}\n"
        # a payload using MPI is an MPI job of its own (one rank), not a rank of srun's step
        sizes = [open(f"{w}/size.txt").read() for (w,) in query(
            home, "SELECT j.workdir FROM jobs j JOIN tasks t USING (task_id) WHERE t.name = 'mpi'")]
        assert sizes == ["1\n"] * 4
        # the worker drains once idle, and its batch job ends
        wait_for(lambda: query(home, "SELECT state FROM workers")[0][0] in ("done",), 120, "worker done")
        # swept by the queue's policy: the logs stay, the rest goes
        (worker_id,) = query(home, "SELECT worker_id FROM workers")[0]
        left = sorted(p.name for p in (home / "workers" / worker_id).iterdir())
        assert left == [f"{worker_id}.err", f"{worker_id}.out"]
    finally:
        run_cli("tower", "stop", env=env)


def test_scancel_is_noticed_and_two_workers_share_the_tower(slurm_cluster, tmp_path):
    env = tower(tmp_path, site(tmp_path, max_running=2, max_queued=1))
    home = tmp_path / "tower"
    try:
        workload = write_workload(tmp_path, """
name: long
tasks:
  - name: long
    command: sleep 600
    count: 8
    walltime: 5m
    max_attempts: 1
""")
        run_cli("submit", workload, env=env, check=True)
        both = wait_for(lambda: (rows := query(home, "SELECT worker_id, batch_id FROM workers WHERE state='running'"))
                        and len(rows) == 2 and states(env).get("running") == 8 and rows, 180,
                        "two MPI jobs running 4 payloads each")
        victim, batch_id = both[0]
        held = {j for (j,) in query(home, "SELECT job_id FROM jobs WHERE worker_id=?", (victim,))}
        assert len(held) == 4
        subprocess.run(["scancel", batch_id], check=True)
        wait_for(lambda: query(home, "SELECT state FROM workers WHERE worker_id=?", (victim,))[0][0]
                 in ("cancelled", "done", "failed"), 120, "the cancelled worker noticed")
        # its jobs went back to the pool without using an attempt, and a new worker takes them
        wait_for(lambda: states(env).get("running") == 8 and len(query(
            home, "SELECT 1 FROM workers WHERE state='running'")) == 2, 180, "a replacement worker running them")
        for job_id in held:
            (attempt, state, worker) = query(home, "SELECT attempt, state, worker_id FROM jobs WHERE job_id=?",
                                             (job_id,))[0]
            assert (attempt, state) == (1, "running") and worker != victim
        # hpc-edge kill --worker cancels a batch job through the tower
        other = both[1][0]
        assert json.loads(run_cli("kill", "--worker", other, env=env, check=True).stdout)["cancelled"] is True
        wait_for(lambda: query(home, "SELECT state FROM workers WHERE worker_id=?", (other,))[0][0]
                 in ("cancelled", "done", "failed"), 120, "worker cancelled by kill --worker")
    finally:
        run_cli("tower", "stop", env=env)
    # the tower's stop leaves no batch job of ours behind
    wait_for(lambda: subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == "", 120,
             "every batch job gone")
