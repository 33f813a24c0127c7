"""The ``hpc-edge`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

logger = logging.getLogger(__name__)


def user_errors() -> tuple[type[Exception], ...]:
    """The product's own errors: a clear line for the user, not a traceback (imported when needed)."""
    from launchers import LauncherError

    from .client import ClientError
    from .service import ServiceError
    from .site import SiteError
    from .store import StoreError
    from .workload import WorkloadError

    return (WorkloadError, SiteError, ServiceError, StoreError, ClientError, LauncherError, OSError)


def load_workload(path):
    from .workload import load_workload as load

    return load(path)


def Console(**kw):  # noqa: N802 - rich's console, imported only to print
    from rich.console import Console as RichConsole

    return RichConsole(**kw)


def Table(**kw):  # noqa: N802
    from rich.table import Table as RichTable

    return RichTable(**kw)


def print_table(table) -> None:
    """Print a table whole: wider than the terminal (or than 80 columns, into a pipe) rather than with
    its numbers and names cut to fit ("10000…" for 1,000,000 jobs). A column of long text sets its own
    ``max_width`` to wrap within it."""
    from rich.measure import Measurement

    console = Console()
    needed = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if needed > console.width:
        console = Console(width=needed)
    console.print(table)


def default_home() -> Path:
    return Path(os.environ.get("HPC_EDGE_HOME", Path.home() / ".hpc-edge"))


def tower_client(data_dir: Path | None):
    """A client of the tower serving ``data_dir`` (imported here: ``hpc-edge run`` needs none)."""
    from .client import TowerClient

    return TowerClient.from_data_dir(data_dir or default_home())


def data_dir_option(f):
    return click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                        help="the tower's data directory (default: $HPC_EDGE_HOME or ~/.hpc-edge)")(f)


class Cli(click.Group):
    """Turns the product's own errors into one clear line and exit status 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not isinstance(exc, user_errors()):
                raise
            click.echo(f"hpc-edge: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=Cli)
@click.version_option(package_name="hpc-edge")
def main():
    """hpc-edge: a control tower that packs payloads into MPI jobs."""


@main.command()
@click.argument("workload", type=click.Path(path_type=Path))
@click.option("--ranks", type=click.IntRange(1, 4096), default=2, show_default=True, help="MPI ranks of the worker")
@click.option("--cores-per-rank", type=click.IntRange(0, 4096), default=0,
              help="core slots per rank (default: this machine's cores / ranks, at least the largest job's)")
@click.option("--memory-per-rank-mb", type=click.IntRange(0), default=0, help="0: this machine's memory / ranks")
@click.option("--walltime", default=None, help="worker allocation walltime (e.g. 30m); default unlimited")
@click.option("--walltime-margin", default="60", show_default=True,
              help="a job goes only to a worker with its walltime estimate + this much left")
@click.option("--walltime-grace", default="60", show_default=True,
              help="payloads still running this long before the allocation ends are preempted")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="MPI jobs (workers) running at once")
@click.option("--messenger", type=click.Choice(["zmq", "files"]), default="zmq", show_default=True,
              help="how workers talk to the tower: ZeroMQ, or files in the data directory")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="where the run's store and job directories go (default: .hpc-edge/runs/<workload name>)")
@click.option("--scratch", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="run payloads in this node-local directory (e.g. /dev/shm); outputs and non-empty logs "
                   "(everything, if a job fails) move to the job's directory when it ends")
@click.option("--resume", is_flag=True, help="finish an earlier, interrupted run in the same data directory")
@click.option("--fresh", is_flag=True, help="delete an earlier run in the data directory and start over")
@click.option("--json", "as_json", is_flag=True, help="print a machine-readable summary (counts by state)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--log-level", default="WARNING", show_default=True)
def run(workload, ranks, cores_per_rank, memory_per_rank_mb, walltime, walltime_margin, walltime_grace, workers,
        messenger, data_dir, scratch, resume, fresh, as_json, quiet, log_level):
    """Run WORKLOAD to the end on this machine (a tower in-process, mpiexec, no batch system)."""
    from .run import RunOptions, run_workload, summary_table
    from .workload import parse_duration

    if resume and fresh:
        raise click.UsageError("--resume and --fresh exclude each other")
    wl = load_workload(workload)
    if scratch is not None:
        try:
            scratch.mkdir(parents=True, exist_ok=True)
            if not os.access(scratch, os.W_OK | os.X_OK):
                raise PermissionError("not writable")
        except OSError as exc:
            raise click.UsageError(f"--scratch {scratch}: cannot use it: {exc}") from None
    largest = max(t.cores for t in wl.tasks)
    cores = cores_per_rank or max(largest, (os.cpu_count() or 1) // ranks, 1)
    data_dir = data_dir or Path(".hpc-edge") / "runs" / wl.name
    opts = RunOptions(data_dir=data_dir, ranks=ranks, cores_per_rank=cores, memory_per_rank_mb=memory_per_rank_mb,
                      walltime=parse_duration(walltime) if walltime else None, workers=workers,
                      walltime_margin_s=_seconds(walltime_margin), walltime_grace_s=_seconds(walltime_grace),
                      messenger=messenger, scratch=str(scratch.resolve()) if scratch else None,
                      resume=resume, fresh=fresh,
                      progress=not (quiet or as_json), log_level=log_level)
    console = Console(stderr=True) if opts.progress else None
    summary, status = run_workload(wl, opts, console)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        print_table(summary_table(summary))
        if status == 130:
            click.echo(f"interrupted; finish with: hpc-edge run {workload} --resume"
                       + (f" --data-dir {data_dir}" if data_dir != Path('.hpc-edge/runs') / wl.name else ""))
    from hpc_edge.exiting import exit_now

    exit_now(status)  # the run is over and durable: store closed, workers reaped, summary printed


def _seconds(text: str) -> float:
    from .workload import parse_duration

    return 0.0 if text.strip() in ("0", "0s") else parse_duration(text)


# ---- the tower as a service ------------------------------------------------------------------
@main.group()
def tower():
    """Start, stop or look at a tower running as a background service."""


@tower.command("start")
@data_dir_option
@click.option("--site", type=click.Path(path_type=Path), default=None, help="site config (YAML)")
@click.option("--foreground", is_flag=True, help="stay in the foreground (for systemd, tests)")
@click.option("--log-level", default="INFO", show_default=True)
def tower_start(data_dir, site, foreground, log_level):
    """Start a tower (a daemon with a pidfile and a log in its data directory)."""
    from .daemon import start_daemon, serve_foreground

    data_dir = (data_dir or default_home()).resolve()
    if foreground:
        serve_foreground(data_dir, site, log_level)
    else:
        info = start_daemon(data_dir, site, log_level)
        click.echo(f"tower started: pid {info['pid']}, API {info['api']}, relays connect to {info['tower']}")


@tower.command("stop")
@data_dir_option
def tower_stop(data_dir):
    """Stop the tower (workers are stopped; their running jobs go back to the pool)."""
    from .daemon import stop_daemon

    pid = stop_daemon((data_dir or default_home()).resolve())
    click.echo(f"tower (pid {pid}) stopped")


@tower.command("status")
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
def tower_status(data_dir, as_json):
    """Is the tower up, and what is it doing."""
    _print_status(tower_client(data_dir).status(), as_json)


# ---- talking to a running tower -------------------------------------------------------------
@main.command()
@click.argument("workload", type=click.Path(path_type=Path))
@data_dir_option
def submit(workload, data_dir):
    """Submit WORKLOAD to a running tower."""
    load_workload(workload)  # the same checks, with line numbers, before anything is sent
    result = tower_client(data_dir).submit(workload.read_text(), str(workload))
    click.echo(f"submitted: tasks {', '.join(map(str, result['tasks']))}")


@main.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
def status(data_dir, as_json):
    """Counts of jobs by task and state."""
    _print_status(tower_client(data_dir).status(), as_json)


def _print_status(st: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(st))
        return
    states = ["activated", "sent", "running", "finished", "failed", "cancelled"]
    table = Table(title=f"tower {st['address']}: {st['workers']} workers, {st['ready']} ready")
    table.add_column("task id", justify="right")
    table.add_column("task")
    table.add_column("jobs", justify="right")
    for s in states:
        table.add_column(s, justify="right")
    for task in st["tasks"]:
        table.add_row(str(task["task_id"]), task["name"], str(task["jobs"]),
                      *(str(task["states"].get(s, 0)) for s in states))
    print_table(table)
    if st.get("rejected"):
        click.echo(f"rejected messages: {st['rejected']}")


@main.command()
@data_dir_option
@click.option("--state", default=None, help="only jobs in this state")
@click.option("--task", type=int, default=None, help="only jobs of this task id")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def jobs(data_dir, state, task, limit, as_json):
    """List jobs."""
    rows = tower_client(data_dir).jobs(state, task, limit)
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table()
    for col in ("job", "task", "state", "attempt", "worker", "rank", "exit", "error", "wall s"):
        table.add_column(col, max_width=60 if col == "error" else None)
    for r in rows:
        error = f"{r['error_code']} {r['error_diag']}" if r["error_code"] else ""
        table.add_row(str(r["job_id"]), str(r["task_id"]), r["state"], str(r["attempt"]), r["worker_id"] or "",
                      "" if r["rank"] is None else str(r["rank"]), "" if r["exit_code"] is None else str(r["exit_code"]),
                      error, "" if r["wall_s"] is None else f"{r['wall_s']:.3f}")
    print_table(table)


@main.command()
@click.argument("job_id", type=int)
@data_dir_option
@click.option("--stderr", "stream", flag_value="stderr", help="show stderr instead of stdout")
@click.option("--stdout", "stream", flag_value="stdout", default=True)
def logs(job_id, data_dir, stream):
    """Print the stdout (or stderr) of JOB_ID's latest attempt."""
    sys.stdout.buffer.write(tower_client(data_dir).log(job_id, stream))


@main.command()
@click.argument("job_ids", type=int, nargs=-1)
@data_dir_option
@click.option("--task", type=int, default=None, help="kill every job of this task")
@click.option("--worker", default=None, help="cancel this worker's batch job")
def kill(job_ids, data_dir, task, worker):
    """Kill jobs (their payloads' process groups die), a whole task, or a worker."""
    if not job_ids and task is None and worker is None:
        raise click.UsageError("name jobs, --task or --worker")
    client = tower_client(data_dir)
    body = {"worker": worker} if worker else {"task": task} if task is not None else {"jobs": list(job_ids)}
    click.echo(json.dumps(client.kill(body)))


@main.command()
@click.argument("job_ids", type=int, nargs=-1)
@data_dir_option
@click.option("--task", type=int, default=None, help="retry the jobs of this task that did not finish")
@click.option("--failed", "failed_only", is_flag=True, help="with --task: only failed jobs, not cancelled ones")
def retry(job_ids, data_dir, task, failed_only):
    """Send failed (or cancelled) jobs again: one more attempt each."""
    if not job_ids and task is None:
        raise click.UsageError("name jobs or --task")
    client = tower_client(data_dir)
    if task is not None:
        body = {"task": task, "states": ["failed"] if failed_only else ["failed", "cancelled"]}
    else:
        body = {"jobs": list(job_ids)}
    click.echo(json.dumps(client.retry(body)))


@main.group()
def keys():
    """CURVE keys for the tower and its workers."""


@keys.command("init")
@data_dir_option
def keys_init(data_dir):
    """Write the tower's and the clients' key pairs (0600) into DATA_DIR/keys."""
    from hpc_edge.keys import create_keys

    where = (data_dir or default_home()) / "keys"
    create_keys(where)
    click.echo(f"keys in {where}")


if __name__ == "__main__":
    main()
