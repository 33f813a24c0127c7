"""Benchmark 6, batch: the throughput path through a real batch system (Slurm), against what a user of
that batch system would do instead.

Ours is the service as a site runs it: ``hpc-edge tower start --site S`` (S has one Slurm queue: 1
node, 2 ranks x 1 core, at most one worker), then ``hpc-edge submit`` of N ``/bin/true`` payloads
(5,000; quick: 300). The tower's provisioner ``sbatch``es a worker, Slurm starts it (``srun
--mpi=pmi2``), its relay says hello, and the payloads run and report as in ``throughput``. Figures,
from the tower's store (the payloads' own start and end times, so no poll interval is counted):

  jobs/s from the start of ``hpc-edge submit`` to the end of the last payload (the batch queue,
    the worker's start-up and the run: what a user waits for)
  seconds from the start of ``hpc-edge submit`` to the first payload's start
  jobs/s from the first payload's start to the last one's end

Peers, in the same run, each repeat after ours, each on an empty queue:
  raw_in_batch_job  one batch job of 2 tasks whose script runs the raw peer of ``throughput``
                    (``subprocess.run(['/bin/true'])`` from 2 processes, peers/raw_true.py), N times:
                    the floor, with nothing tracked, retried or reported
  slurm_array       ``sbatch --array=0-(M-1) --wrap=/bin/true``: one Slurm job per payload, as many at
                    once as the node's CPUs allow (M: at most 500, and below the cluster's MaxArraySize)
  srun_steps        one batch job of 2 tasks whose script runs M ``srun -n1 --exact /bin/true`` steps,
                    2 at a time (M: at most 200: steps are slow)
  parsl_htex_slurm  Parsl HighThroughputExecutor with SlurmProvider, one block of one node, 2 workers,
                    a ``bash_app`` running ``true``, N times (peers/parsl_true.py, bench/.peers-venv)
The Slurm peers are timed from ``sbatch`` to the moment ``squeue`` no longer lists their job (polled
every 0.1 s); Parsl from the start of ``parsl.load`` (which submits its block) to the last result.
Each figure is the peer's jobs over that time, so peers that ran fewer payloads than ours are
compared by rate; ``params`` gives every peer's count.

Needs a Slurm cluster that answers ``sinfo`` (``scripts/slurm-single-node.sh up`` makes one here, as
root). Without one the records say ``skipped: <why>``, unless HPC_EDGE_REQUIRE_SLURM=1, which makes
that an error, as in the tests.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .harness import (
    PEERS,
    PEERS_PYTHON,
    BenchError,
    Context,
    Figure,
    Record,
    last_json_line,
    peers_env,
    tail,
    timed,
    unavailable,
)
from .towerctl import BenchTower, write_true_workload

NAME = "batch"
PEER_NAMES = ("raw_in_batch_job", "slurm_array", "srun_steps", "parsl_htex_slurm")
RANKS = 2

SITE = """name: bench-batch
tower:
  bind: tcp://127.0.0.1:0
  heartbeat_s: 10
  lost_after_s: 180
  idle_drain_s: 5
api:
  bind: 127.0.0.1:0
provision_interval_s: 0.5
queues:
  - name: bench
    launcher: slurm
    partition: {partition}
    nodes: 1
    ranks_per_node: {ranks}
    cores_per_rank: 1
    walltime: 30m
    max_running: 1
    max_queued: 1
"""

RAW_SCRIPT = """#!/bin/bash
# {n} payloads from 2 processes, nothing tracked: the floor of this path
exec {python} {raw} {n} 2
"""

STEPS_SCRIPT = """#!/bin/bash
# {m} payloads as srun steps, 2 at a time, inside this 2-task allocation
seq 1 {m} | xargs -P 2 -I{{}} srun -n1 -N1 --exact --quiet /bin/true
"""


def slurm_status() -> tuple[str | None, str]:
    """(the default partition, "") when a Slurm cluster answers here; (None, why) otherwise."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None, "no sinfo/sbatch on PATH (as root, scripts/slurm-single-node.sh up starts a one-node cluster)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None, "sinfo timed out"
    usable = [line.split()[0] for line in out.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].rstrip("*") in ("idle", "mixed", "allocated", "completing")]
    if out.returncode != 0 or not usable:
        return None, f"no usable Slurm node (sinfo: {tail(out.stdout or out.stderr, 200)})"
    default = next((p for p in usable if p.endswith("*")), usable[0])
    return default.rstrip("*"), ""


def max_array_size() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    for line in out.stdout.splitlines():
        if line.split("=")[0].strip() == "MaxArraySize":
            return int(line.split("=", 1)[1])
    return 1001  # Slurm's default


def sizes(ctx: Context) -> tuple[int, int, int]:
    """(ours and Parsl, the array, the srun steps)."""
    if ctx.quick:
        return 300, 30, 10
    return 5_000, min(500, max_array_size() - 1), 200


def wait_queue_empty(job_ids: list[str], timeout_s: float) -> float:
    """Poll ``squeue`` until none of these jobs is listed; the perf_counter at which it was first seen empty."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True,
                             text=True, timeout=60)
        # squeue exits 1 ("Invalid job id") once Slurm has forgotten a finished job
        if not out.stdout.strip():
            return time.perf_counter()
        time.sleep(0.1)
    raise BenchError(f"Slurm jobs {job_ids} still queued or running after {timeout_s:.0f} s")


def sbatch(argv: list[str], cwd: Path) -> str:
    out = subprocess.run(["sbatch", "--parsable", *argv], cwd=cwd, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise BenchError(f"sbatch {' '.join(argv)} exited {out.returncode}: {tail(out.stderr)}")
    return out.stdout.strip().split(";")[0]


# ---- ours -----------------------------------------------------------------------------------------
def run_ours(ctx: Context, partition: str, n: int, tag: str) -> dict:
    where = ctx.scratch(f"batch-{tag}")
    tower = BenchTower(where / "home", site_text=SITE.format(partition=partition, ranks=RANKS))
    workload = write_true_workload(where / "workload.yaml", n, name="bench-batch")
    tower.start()
    try:
        submitted = time.time()
        _, error = tower.submit(workload, timeout=600)
        if error is not None:
            raise BenchError(f"hpc-edge submit: {error}")
        wait_finished(tower, n, timeout_s=600)
        figures = from_store(tower.home / "store.sqlite", n, submitted)
        tower.stop()  # stops the worker: its batch job is cancelled
    finally:
        tower.kill()
        # the next run starts on an empty queue (after a kill, the worker's batch job is cancelled here)
        batch_ids = [r[0] for r in query(tower.home / "store.sqlite",
                                         "SELECT batch_id FROM workers WHERE batch_id IS NOT NULL")]
        if batch_ids:
            subprocess.run(["scancel", *batch_ids], capture_output=True, timeout=60)
            wait_queue_empty(batch_ids, 120)
    return figures


def wait_finished(tower: BenchTower, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        totals = tower.status(timeout=60)["totals"]
        if totals.get("finished", 0) == n:
            return
        if any(totals.get(s, 0) for s in ("failed", "cancelled")):
            raise BenchError(f"jobs ended otherwise than finished: {totals}")
        time.sleep(0.1)
    raise BenchError(f"{n} jobs not finished within {timeout_s:.0f} s")


def query(store: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def from_store(store: Path, n: int, submitted: float) -> dict:
    count, first, last = query(store, "SELECT count(*), min(start_time), max(end_time) FROM jobs "
                                      "WHERE state='finished'")[0]
    if count != n:
        raise BenchError(f"{count} of {n} jobs finished")
    return {"rate": n / (last - submitted), "first_start_s": first - submitted, "run_rate": n / (last - first)}


# ---- peers ----------------------------------------------------------------------------------------
def run_array(ctx: Context, m: int, tag: str) -> float:
    where = ctx.scratch(f"batch-array-{tag}")
    started = time.perf_counter()
    job = sbatch([f"--array=0-{m - 1}", "-n1", "-o", "/dev/null", "-e", "/dev/null", "--wrap=/bin/true"], where)
    return m / (wait_queue_empty([job], 3600) - started)


def run_script(ctx: Context, name: str, text: str, jobs: int, tag: str) -> float:
    """A 2-task batch job running ``text``: its jobs over sbatch -> gone from squeue (nothing on stderr)."""
    where = ctx.scratch(f"batch-{name}-{tag}")
    script = where / f"{name}.sh"
    script.write_text(text)
    script.chmod(0o755)
    started = time.perf_counter()
    job = sbatch(["-n", str(RANKS), "-o", str(where / f"{name}.out"), "-e", str(where / f"{name}.err"), str(script)],
                 where)
    ended = wait_queue_empty([job], 3600)
    errors = (where / f"{name}.err").read_text() if (where / f"{name}.err").exists() else ""
    if errors.strip():
        raise BenchError(f"{name}: {tail(errors)}")
    return jobs / (ended - started)


def run_parsl(ctx: Context, partition: str, n: int, tag: str) -> float:
    where = ctx.scratch(f"batch-parsl-{tag}")
    got = timed([PEERS_PYTHON, PEERS / "parsl_true.py", n, RANKS, where / "runinfo", f"slurm:{partition}"],
                cwd=where, env={**peers_env(), "TMPDIR": str(where)}, timeout=3600)
    if got.returncode != 0:
        raise BenchError(f"parsl_htex_slurm exited {got.returncode}: {tail(got.stderr)}")
    out = last_json_line(got.stdout)
    return n / (float(out["startup_s"]) + float(out["inner_s"]))


# ---- the benchmark --------------------------------------------------------------------------------
def run(ctx: Context) -> list[Record]:
    partition, why = slurm_status()
    n, m_array, m_steps = sizes(ctx)
    params = {"n": n, "payload": "/bin/true", "ranks": RANKS, "launcher": "slurm"}
    label = f"n={n} via Slurm"
    if partition is None:
        status = f"error: HPC_EDGE_REQUIRE_SLURM=1 but {why}" if os.environ.get("HPC_EDGE_REQUIRE_SLURM") == "1" \
            else f"skipped: {why}"
        return [Record(NAME, "jobs/s from submit to the last payload's end, through Slurm", params,
                       unavailable(status, "jobs/s"), label=label)]
    params.update({"partition": partition, "raw_in_batch_job_jobs": n, "slurm_array_jobs": m_array,
                   "srun_steps_jobs": m_steps, "parsl_jobs": n,
                   "parsl": "HighThroughputExecutor, SlurmProvider (1 node, 2 cores, not exclusive), "
                            "max_workers_per_node=2, bash_app 'true'"})
    repeats = ctx.repeats(full=3, quick=1)
    ours: dict[str, list[float]] = {"rate": [], "first_start_s": [], "run_rate": []}
    series: dict[str, list[float]] = {k: [] for k in PEER_NAMES}
    errors: dict[str, str] = {}
    if ctx.peers_status is not None:
        errors["parsl_htex_slurm"] = ctx.peers_status
    raw = RAW_SCRIPT.format(n=n, python=sys.executable, raw=PEERS / "raw_true.py")
    runners = {"raw_in_batch_job": lambda i: run_script(ctx, "raw", raw, n, f"{i}"),
               "slurm_array": lambda i: run_array(ctx, m_array, f"{i}"),
               "srun_steps": lambda i: run_script(ctx, "steps", STEPS_SCRIPT.format(m=m_steps), m_steps, f"{i}"),
               "parsl_htex_slurm": lambda i: run_parsl(ctx, partition, n, f"{i}")}
    for i in range(repeats):
        ctx.log(f"batch n={n}: repeat {i + 1}/{repeats}: hpc-edge tower + submit, worker through Slurm")
        got = run_ours(ctx, partition, n, f"{i}")
        for key in ours:
            ours[key].append(got[key])
        ctx.log(f"  ours: {got['rate']:.0f} jobs/s from submit to the last end, first payload after "
                f"{got['first_start_s']:.2f} s, {got['run_rate']:.0f} jobs/s once running")
        for peer in PEER_NAMES:
            if peer in errors:
                continue
            try:
                rate = runners[peer](i)
            except BenchError as exc:
                errors[peer] = f"error: {exc}"
                ctx.log(f"  {peer}: {exc}")
                continue
            series[peer].append(rate)
            ctx.log(f"  {peer}: {rate:.1f} jobs/s")
    peers = {p: unavailable(errors[p], "jobs/s") if p in errors else Figure("jobs/s", series[p]) for p in PEER_NAMES}
    return [
        Record(NAME, "jobs/s from submit to the last payload's end, through Slurm", params,
               Figure("jobs/s", ours["rate"]), peers,
               notes="ours: `hpc-edge submit` to a tower with one Slurm queue, from its start to the last "
                     "payload's end (the store's times); peers: their jobs over sbatch -> gone from squeue "
                     "(Parsl: parsl.load -> last result). No target: the issue sets none for this path",
               label=label),
        Record(NAME, "seconds from submit to the first payload's start, through Slurm", params,
               Figure("s", ours["first_start_s"]),
               notes="the provisioner's look (at once on a submit), sbatch, Slurm starting the job, srun, MPI "
                     "and the relay's hello", label=label),
        Record(NAME, "jobs/s from the first payload's start to the last one's end, through Slurm", params,
               Figure("jobs/s", ours["run_rate"]), label=label),
    ]
