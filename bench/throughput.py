"""Benchmark 1, throughput: N ``/bin/true`` payloads on 2 ranks, end to end, against raw peers and Parsl.

Ours is ``hpc-edge run WORKLOAD --ranks 2 --json --fresh`` as a user types it: a tower in-process,
real ``mpiexec``, a relay over ZeroMQ, one subprocess per payload, every state change in SQLite.
Two figures are kept: jobs/s over the wall-clock of the whole command (start-up, mpiexec, drain and
exit included: the honest end-to-end number, and the one the targets apply to) and jobs/s over the
``elapsed_s`` the command reports itself (from the start of serving to the last job's end).

Ours runs twice per repeat: as above (each payload's directory and logs in the data directory), and
with ``--scratch /dev/shm/hpc-edge-bench/<run>`` (payloads in node-local RAM; nothing of theirs reaches
the data directory, since /bin/true leaves no output and empty logs). Both carry the targets.

Peers, in the same run and interleaved with ours repeat by repeat:
  raw_subprocess  ``subprocess.run(['/bin/true'])`` from 2 processes (peers/raw_true.py)
  process_pool    ``ProcessPoolExecutor(2).map`` of a function doing that (peers/pool_true.py)
  parsl_htex      Parsl HighThroughputExecutor, LocalProvider, 2 workers, bash_app ``true``
                  (peers/parsl_true.py, in bench/.peers-venv)
  spawn_floor     a floor, not a tool: a rank's per-payload process and file work (own directory in
                  node-local RAM, session, log files, wait4, the report and log checks, clean-up) in C
                  from 2 processes, nothing tracked (peers/spawn_floor.c, built with ``cc``); ours /
                  this is what tracking the jobs costs
Peers' wall-clock is of their whole script too; their inner figure is their timed phase.

A third figure, without a target, says where a run's CPU went: the CPU the whole machine spent
during the command (``timed``'s busy CPU, all cores), per job, for ours and each peer. It is the one
measure that sees Parsl's worker pool and interchange, which run detached, so the machine must be
otherwise idle. Ours is split into the payloads' own CPU (``cpu_s`` the ranks recorded from
``wait4``, summed from the run's store) and the rest: hpc-edge's own cost per job (tower, ranks,
mpiexec, start-up and shut-down). ``extra`` also keeps the CPU of the command and the processes it
waited for, which for ours and the raw peers should come out close to the machine's figure.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .harness import (
    HPC_EDGE,
    PEERS,
    PEERS_PYTHON,
    BenchError,
    Context,
    Figure,
    Record,
    Target,
    last_json_line,
    peers_env,
    py_spy_wrap,
    tail,
    timed,
    unavailable,
)

NAME = "throughput"
NODE_LOCAL = Path("/dev/shm/hpc-edge-bench")  # node-local RAM, as a site would give payloads for --scratch
PEER_NAMES = ("raw_subprocess", "process_pool", "parsl_htex", "spawn_floor")


def workload_yaml(n: int) -> str:
    # "true" is a YAML boolean: the task name is quoted so it stays a string.
    return f"""name: bench-throughput
tasks:
  - name: "true"
    command: /bin/true
    count: {n}
    walltime: 1m
    max_attempts: 1
"""


@dataclass
class Ran:
    """One run of ours or a peer: wall-clock of the command, its own timed phase, CPU (seconds)."""

    wall_s: float
    inner_s: float
    busy_s: float  # the machine's busy CPU during the command
    cpu_s: float   # the command's and its waited-for descendants' CPU
    payload_cpu_s: float | None = None  # ours only: the payloads' own CPU, from the store


def run_ours(ctx: Context, n: int, ranks: int, tag: str, profile: Path | None = None,
             node_local: Path | None = None) -> Ran:
    """One ``hpc-edge run``; under py-spy when ``profile`` is a file; with payloads on
    ``--scratch node_local`` when given."""
    where = ctx.scratch(f"throughput-{tag}")
    wl = where / "workload.yaml"
    wl.write_text(workload_yaml(n))
    data = where / "data"
    argv = [HPC_EDGE, "run", wl, "--ranks", ranks, "--json", "--data-dir", data, "--fresh"]
    if node_local is not None:
        argv += ["--scratch", node_local / tag]
    try:
        got = timed(py_spy_wrap(argv, profile) if profile else argv, cwd=where, timeout=3600)
        if got.returncode != 0:
            raise BenchError(f"hpc-edge run exited {got.returncode}: {tail(got.stderr)}")
        summary = last_json_line(got.stdout)
        finished = summary["states"].get("finished", 0)
        if finished != n:
            raise BenchError(f"hpc-edge run finished {finished} of {n} jobs: {summary['states']}")
        return Ran(got.wall_s, float(summary["elapsed_s"]), got.busy_s, got.cpu_s,
                   payloads_cpu_s(data / "store.sqlite", n))
    finally:
        if node_local is not None:
            shutil.rmtree(node_local / tag, ignore_errors=True)


def payloads_cpu_s(store: Path, n: int) -> float:
    """The payloads' CPU, summed from the run's store (read-only); every job must have its figure."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        count, total = db.execute("SELECT count(cpu_s), sum(cpu_s) FROM jobs").fetchone()
    finally:
        db.close()
    if count != n:
        raise BenchError(f"{store}: {count} of {n} jobs have a cpu_s")
    return float(total)


def build_spawn_floor(ctx: Context) -> tuple[Path | None, str | None]:
    """peers/spawn_floor.c built with the system's C compiler: (the program, None) or (None, why not)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None, "skipped: no C compiler (cc or gcc) to build bench/peers/spawn_floor.c"
    program = ctx.scratch("spawn-floor") / "spawn_floor"
    got = subprocess.run([cc, "-O2", "-o", str(program), str(PEERS / "spawn_floor.c")], capture_output=True,
                         text=True)
    if got.returncode != 0:
        return None, f"error: {cc} could not build bench/peers/spawn_floor.c: {tail(got.stderr)}"
    return program, None


def run_peer(ctx: Context, peer: str, n: int, procs: int, tag: str, floor: Path | None = None) -> Ran:
    """One run of a peer's script (``floor``: the built spawn_floor program)."""
    where = ctx.scratch(f"peer-{peer}-{tag}")
    # a peer's temporary files go with its scratch directory (Parsl leaves a multiprocessing pymp-* directory per run)
    dirs = None  # the floor's payload directories: node-local RAM, as ours with --scratch
    if peer == "spawn_floor":
        dirs = NODE_LOCAL / f"floor-{tag}"
        dirs.mkdir(parents=True, exist_ok=True)
        argv, env = [floor, n, procs, dirs], {}
    elif peer == "parsl_htex":
        argv = [PEERS_PYTHON, PEERS / "parsl_true.py", n, procs, where / "runinfo"]
        env = {**peers_env(), "TMPDIR": str(where)}
    else:
        script = {"raw_subprocess": "raw_true.py", "process_pool": "pool_true.py"}[peer]
        argv, env = [sys.executable, PEERS / script, n, procs], {"TMPDIR": str(where)}
    try:
        got = timed(argv, cwd=where, env=env, timeout=3600)
    finally:
        if dirs is not None:
            shutil.rmtree(dirs, ignore_errors=True)
    if got.returncode != 0:
        raise BenchError(f"{peer} exited {got.returncode}: {tail(got.stderr)}")
    out = last_json_line(got.stdout)
    return Ran(got.wall_s, float(out["inner_s"]), got.busy_s, got.cpu_s)


def sizes(ctx: Context) -> list[int]:
    if ctx.options.get("throughput_n"):
        return [int(x) for x in ctx.options["throughput_n"]]
    return [1_000] if ctx.quick else [5_000, 20_000]


def peer_figs(ctx: Context, series: dict[str, list[float]], errors: dict[str, str],
              unit: str = "jobs/s") -> dict[str, Figure]:
    figs = {}
    for peer in PEER_NAMES:
        if peer == "parsl_htex" and ctx.peers_status is not None:
            figs[peer] = unavailable(ctx.peers_status, unit)
        elif peer in errors:
            figs[peer] = unavailable(errors[peer], unit)
        else:
            figs[peer] = Figure(unit, series[peer])
    return figs


def cpu_figure(runs: list[Ran], n: int, cores: int) -> Figure:
    """The machine's busy CPU per job, and in ``extra`` its split (payloads / hpc-edge's own), the CPU
    of the command and what it waited for, and the busy share (of ``cores`` over the wall-clock)."""
    return Figure("us/job", [1e6 * r.busy_s / n for r in runs], extra={
        "payloads_us_per_job": [1e6 * r.payload_cpu_s / n for r in runs],
        "own_us_per_job": [1e6 * (r.busy_s - r.payload_cpu_s) / n for r in runs],
        "waited_for_us_per_job": [1e6 * r.cpu_s / n for r in runs],
        "busy_share": [r.busy_s / (cores * r.wall_s) for r in runs]})


def peer_cpu_figs(ctx: Context, runs: dict[str, list[Ran]], errors: dict[str, str], n: int) -> dict[str, Figure]:
    figs = peer_figs(ctx, {k: [1e6 * r.busy_s / n for r in got] for k, got in runs.items()}, errors, "us/job")
    for name, fig in figs.items():
        if fig.values:
            fig.extra = {"waited_for_us_per_job": [1e6 * r.cpu_s / n for r in runs[name]]}
    return figs


def run(ctx: Context) -> list[Record]:
    ranks = 2
    records = []
    floor, why_not = build_spawn_floor(ctx)
    if why_not:
        ctx.log(f"throughput: spawn_floor: {why_not}")
    for n in sizes(ctx):
        repeats = ctx.repeats(full=3, quick=2)
        peers = [p for p in PEER_NAMES if p != "parsl_htex" or ctx.peers_status is None]
        parsl_repeats = ctx.repeats(full=3, quick=1)
        runs: dict[str, list[Ran]] = {k: [] for k in ("ours", "ours_scratch", *peers)}
        errors: dict[str, str] = {"spawn_floor": why_not} if why_not else {}
        if ctx.options.get("profile_dir"):
            # a separate, extra run under py-spy: its figures are not kept (the sampler costs time)
            out = ctx.options["profile_dir"] / f"throughput-n{n}.txt"
            ctx.log(f"throughput n={n}: a profiled run (not counted) -> {out}")
            run_ours(ctx, n, ranks, f"{n}-profile", out)

        def keep(key: str, ran: Ran, what: str) -> None:
            runs[key].append(ran)
            ctx.log(f"  {what}: {ran.wall_s:.2f} s wall ({n / ran.wall_s:.0f} jobs/s), inner {ran.inner_s:.2f} s, "
                    f"machine CPU {1e6 * ran.busy_s / n:.1f} us/job")

        for i in range(repeats):
            ctx.log(f"throughput n={n}: repeat {i + 1}/{repeats}: hpc-edge run")
            keep("ours", run_ours(ctx, n, ranks, f"{n}-{i}"), "hpc-edge run")
            keep("ours_scratch", run_ours(ctx, n, ranks, f"{n}-{i}-scratch", node_local=NODE_LOCAL),
                 f"hpc-edge run --scratch {NODE_LOCAL}")
            for peer in peers:
                if peer in errors or (peer == "parsl_htex" and i >= parsl_repeats):
                    continue
                try:
                    ran = run_peer(ctx, peer, n, ranks, f"{n}-{i}", floor)
                except BenchError as exc:
                    errors[peer] = f"error: {exc}"
                    ctx.log(f"  {peer}: {exc}")
                    continue
                keep(peer, ran, peer)

        wall = {k: [n / r.wall_s for r in got] for k, got in runs.items()}
        inner = {k: [n / r.inner_s for r in got] for k, got in runs.items()}
        params = {"n": n, "payload": "/bin/true", "ranks": ranks, "peer_procs": ranks,
                  "repeats": repeats, "parsl_repeats": parsl_repeats,
                  "parsl": "HighThroughputExecutor, LocalProvider, max_workers_per_node=2, bash_app 'true'"}
        records.append(Record(
            NAME, "jobs/s over the wall-clock of the whole command", params, Figure("jobs/s", wall["ours"]),
            peer_figs(ctx, wall, errors),
            [Target(">= 0.8x raw subprocess", ">=", 0.8, "raw_subprocess"),
             Target(">= 3x Parsl HTEX", ">=", 3.0, "parsl_htex")],
            notes="ours: `hpc-edge run --ranks 2 --json --fresh`, timed around the process; "
                  "peers: their whole script, timed the same way", label=f"n={n} wall-clock"))
        records.append(Record(
            NAME, f"jobs/s over the wall-clock, payloads on --scratch {NODE_LOCAL}", params,
            Figure("jobs/s", wall["ours_scratch"]), peer_figs(ctx, wall, errors),
            [Target(">= 0.8x raw subprocess", ">=", 0.8, "raw_subprocess"),
             Target(">= 3x Parsl HTEX", ">=", 3.0, "parsl_htex")],
            notes=f"the same command with `--scratch {NODE_LOCAL}/<run>`: payloads run in node-local RAM, "
                  "only outputs and non-empty logs reach the data directory (none here); the store stays "
                  "on disk", label=f"n={n} wall-clock, scratch"))
        records.append(Record(
            NAME, "jobs/s over the run's own elapsed time", params, Figure("jobs/s", inner["ours"]),
            peer_figs(ctx, inner, errors),
            notes="ours: N / summary elapsed_s (serving start to last job); peers: N / their timed phase "
                  "(Parsl: first submit to last result, after parsl.load). No target: informational",
            label=f"n={n} own elapsed"))
        for key, case in (("ours", ""), ("ours_scratch", ", scratch")):
            records.append(Record(
                NAME, "CPU per job (us): what the machine spent during the whole command", params,
                cpu_figure(runs[key], n, ranks), peer_cpu_figs(ctx, runs, errors, n),
                notes="no target: where the CPU went (all cores, user + system + irq, from /proc/stat). ours' "
                      "extra: the payloads' own CPU per job (from the store), the rest (hpc-edge's own per job), "
                      "the command's and its waited-for processes' CPU, and the busy share of the 2 cores",
                label=f"n={n} CPU per job{case}"))
    shutil.rmtree(NODE_LOCAL, ignore_errors=True)
    return records
