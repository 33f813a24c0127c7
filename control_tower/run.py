"""``hpc-edge run WORKLOAD``: a tower in-process, the local launcher, a progress bar, a summary."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .provisioner import QueueConfig
from .service import LOCK_NAME, LOG_NAME, STORE_NAME, Service, ServiceError
from .store import TERMINAL, StoreWriteError
from .tower import TowerConfig
from .workload import Workload

if TYPE_CHECKING:  # rich is imported where it draws: a --json run draws nothing
    from rich.console import Console
    from rich.table import Table

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    data_dir: Path
    ranks: int = 2
    cores_per_rank: int = 1
    memory_per_rank_mb: int = 0
    walltime: float | None = None
    workers: int = 1
    walltime_margin_s: float = 60.0
    walltime_grace_s: float = 60.0
    messenger: str = "zmq"
    scratch: str | None = None
    resume: bool = False
    fresh: bool = False
    progress: bool = True
    log_level: str = "WARNING"


def prepare_data_dir(opts: RunOptions) -> bool:
    """Make the run's directory ready (the caller holds it: see Service.claim); True if an earlier
    store is resumed."""
    store = opts.data_dir / STORE_NAME
    if store.exists():
        if opts.fresh:
            clear_dir(opts.data_dir, keep=LOCK_NAME)
        elif not opts.resume:
            raise ServiceError(f"{opts.data_dir} holds an earlier run; add --resume to finish it "
                               f"or --fresh to start over")
        else:
            return True
    elif opts.resume:
        raise ServiceError(f"--resume: no earlier run in {opts.data_dir}")
    return False


def clear_dir(path: Path, keep: str) -> None:
    """Remove everything in ``path`` but ``keep``: the lock a tower holds stays the same file (a new
    file in its place would be a second lock, and a second tower could take it)."""
    for entry in os.scandir(path):
        if entry.name == keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


class LogFile(logging.FileHandler):
    """The run's ``tower.log``. A write that fails (a full disk, a quota) is said once, in one line
    on stderr, instead of a traceback for every record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"hpc-edge: warning: cannot write {self.baseFilename} ({sys.exc_info()[1]}); "
                             f"what goes there is lost until the run ends\n")


def log_to(data_dir: Path, level: str) -> None:
    """Log to stderr at ``level`` and, at INFO or finer, to the run's ``tower.log``."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt)
    handler = LogFile(data_dir / LOG_NAME)
    handler.setFormatter(logging.Formatter(fmt))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(min(logging.INFO, logging.getLevelName(level.upper())))
    for h in logging.getLogger().handlers:
        if h is not handler:
            h.setLevel(level.upper())  # the terminal gets only what was asked for


def run_workload(workload: Workload, opts: RunOptions, console: Console | None) -> tuple[dict, int]:
    """Run to the end; return the summary and the exit status (0 all finished, 1 some did not, 130
    interrupted, 129 its terminal hung up)."""
    queue = QueueConfig(name="local", launcher="local", ranks_per_node=opts.ranks,
                        cores_per_rank=opts.cores_per_rank, memory_per_rank_mb=opts.memory_per_rank_mb,
                        walltime=opts.walltime, walltime_grace_s=opts.walltime_grace_s,
                        max_running=opts.workers, max_queued=opts.workers, messenger=opts.messenger,
                        scratch=opts.scratch)
    tower = TowerConfig(exit_when_done=True, heartbeat_s=5.0, walltime_margin_s=opts.walltime_margin_s)
    service = Service(opts.data_dir, tower, [queue],
                      provision_interval_s=0.5, log_level=opts.log_level)
    service.claim()  # before anything in the directory is read or removed
    try:
        resumed = prepare_data_dir(opts)
        log_to(opts.data_dir, opts.log_level)  # after --fresh has cleared the directory, not into a removed file
        service.open()
        check_fits(service, queue, workload, resumed)
        started = time.monotonic()
        try:
            asyncio.run(_serve(service, opts, console, unstored(service, workload) if resumed else workload))
        except StoreWriteError:
            stop_local_workers(service)  # nothing they report could be kept: none left running
            raise
        elapsed = time.monotonic() - started
        summary = summarize(service, workload, elapsed, resumed)
    finally:
        service.close()
    if service.provisioner.error:
        raise ServiceError(service.provisioner.error)
    if service.interrupted:
        return summary, 129 if service.hung_up else 130
    return summary, 0 if summary["ok"] else 1


def hang_up(service: Service, terminals: list[int]) -> None:
    """The run's terminal has gone (an ssh connection dropped): stop as Ctrl-C does, the running jobs
    back to the pool, rather than die and leave the MPI job running with no tower. What is still to
    be written to the terminal (the progress bar, the summary) goes nowhere: a write to a terminal that
    has hung up fails, and must not stop the run's orderly end. Output into a file or a pipe (--json
    > summary.json) goes there as usual. tower.log says what happened."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in terminals:
        os.dup2(devnull, fd)
    os.close(devnull)
    service.hung_up = True
    logger.warning("the terminal hung up (SIGHUP): stopping; finish the run with --resume")
    service.interrupt()


def unstored(service: Service, workload: Workload) -> Workload | None:
    """The workload's tasks an earlier run never stored (it ended before it could: a full disk, a
    kill): a resumed run stores them, so it finishes the whole workload, not only what was stored."""
    missing = [t for t in workload.tasks if not service.store.task_exists(workload.name, t.name)]
    return workload.model_copy(update={"tasks": missing}) if missing else None


def stop_local_workers(service: Service) -> None:
    """Stop this run's MPI jobs now and wait for them: SIGTERM, and SIGKILL 2 s later (their relays
    would wait for acknowledgements that no tower can give)."""
    for launcher in service.provisioner.launchers.values():
        if hasattr(launcher, "reap_all"):
            launcher.reap_all(timeout=0, kill_grace_s=2.0)


def check_fits(service: Service, queue: QueueConfig, workload: Workload, resumed: bool) -> None:
    specs = [*workload.tasks, *(spec for _, spec in service.tower.book.tasks.values() if resumed)]
    for spec in specs:
        name = spec.name
        if spec.cores > queue.cores_per_rank:
            raise ServiceError(f"task {name!r} needs {spec.cores} cores per job but ranks have "
                               f"{queue.cores_per_rank}; run with --cores-per-rank {spec.cores}")


async def _serve(service: Service, opts: RunOptions, console: Console | None,
                 workload: Workload | None) -> None:
    """Serve until every job is final; a fresh ``workload`` is stored once its worker is on its way."""
    await service.start(workload)
    service.install_signal_handlers()
    terminals = [fd for fd in (1, 2) if os.isatty(fd)]  # asked now: a terminal that hung up is none
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hang_up, service, terminals)
    book = service.tower.book
    total = sum(spec.n_jobs for _, spec in book.tasks.values())
    if not opts.progress:
        await service.serve(until_done=True)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        handle = bar.add_task("jobs", total=total, detail="")
        last = [0.0]

        def tick():
            now = time.monotonic()
            if now - last[0] < 0.2:
                return
            last[0] = now
            t = book.totals()
            bar.update(handle, completed=sum(t[s] for s in TERMINAL),
                       detail=f"running {t['running'] + t['sent']}  failed {t['failed']}")

        await service.serve(until_done=True, tick=tick)
        t = book.totals()
        bar.update(handle, completed=sum(t[s] for s in TERMINAL), detail=f"failed {t['failed']}")


def summarize(service: Service, workload: Workload, elapsed: float, resumed: bool) -> dict:
    book = service.tower.book
    tasks = book.task_summaries()
    states = dict(book.totals())
    n = sum(states.values())
    return {
        "workload": workload.name, "data_dir": str(service.data_dir), "resumed": resumed,
        "elapsed_s": round(elapsed, 3), "jobs": n, "states": states,
        "jobs_per_s": round(states.get("finished", 0) / elapsed, 1) if elapsed > 0 else None,
        "tasks": tasks, "ok": states.get("finished", 0) == n, "tower": dict(service.tower.stats),
    }


def summary_table(summary: dict) -> Table:
    from rich.table import Table

    states = ["finished", "failed", "cancelled", "activated", "running"]
    table = Table(title=f"{summary['workload']}: {summary['jobs']} jobs in {summary['elapsed_s']:.1f} s")
    table.add_column("task")
    table.add_column("jobs", justify="right")
    for s in states:
        table.add_column(s, justify="right")
    for task in summary["tasks"]:
        table.add_row(task["name"], str(task["jobs"]), *(str(task["states"].get(s, 0)) for s in states))
    return table
