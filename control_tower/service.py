"""A tower as a running service: store + tower + provisioner + HTTP API in one asyncio loop.

Used by ``hpc-edge run`` (in-process, ends when the workload is done) and by ``hpc-edge tower start``
(a daemon on a login node).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sqlite3
import time
from pathlib import Path

from hpc_edge.gcpolicy import settle
from hpc_edge.keys import create_keys

from .provisioner import Provisioner, QueueConfig
from .store import Store
from .tower import Tower, TowerConfig
from .workload import Workload

logger = logging.getLogger(__name__)

# names others import from here too
from .paths import INFO_NAME, LOCK_NAME, LOG_NAME, PID_NAME, STORE_NAME, TOKEN_NAME  # noqa: F401


class ServiceError(Exception):
    """The service cannot start (data directory, store, keys) or its work cannot go on."""


def claim_data_dir(data_dir: Path):
    """Hold a data directory for this process's tower alone (``hpc-edge run`` or ``tower start``), or
    ServiceError naming the tower that holds it.

    An exclusive ``flock`` on ``tower.lock``: the kernel drops it when the process ends, however it
    ends, so a killed tower leaves nothing to clear by hand. The descriptor is not inherited, so an MPI
    job that outlives its tower does not keep its successor out."""
    from filelock import FileLock, Timeout

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ServiceError(f"{data_dir} is not a directory (a file is in the way); choose another data "
                           f"directory") from None
    lock = FileLock(data_dir / LOCK_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ServiceError(f"{data_dir} is in use by another tower{_holder(data_dir)}; let it finish or stop "
                           f"it (hpc-edge tower stop, or Ctrl-C in its hpc-edge run)") from None
    return lock


def _holder(data_dir: Path) -> str:
    """" (pid N)" for the tower that wrote this directory's tower.json or tower.pid, if either says."""
    for name in (INFO_NAME, PID_NAME):
        try:
            text = (data_dir / name).read_text()
            return f" (pid {int(json.loads(text)['pid'] if name == INFO_NAME else text.split()[0])})"
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
    return ""


def ensure_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_NAME
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class Service:
    def __init__(self, data_dir: Path, tower_config: TowerConfig, queues: list[QueueConfig],
                 api_bind: str | None = "127.0.0.1:0", provision_interval_s: float = 1.0,
                 log_level: str = "INFO"):
        self.data_dir = Path(data_dir).resolve()
        self.tower_config, self.queues = tower_config, queues
        self.api_bind = api_bind
        self.provision_interval_s = provision_interval_s
        self.log_level = log_level
        self.store = Store(self.data_dir / STORE_NAME)
        self.tower: Tower | None = None
        self.provisioner: Provisioner | None = None
        self.api = None
        self.lock = None  # held from claim() to close(): see claim_data_dir
        self.interrupted = 0
        self.hung_up = False  # a run's terminal went (SIGHUP): it stops as if interrupted
        self.stop_requested = False
        # work arrived (a submit, a retry) since the provisioner last looked: it looks at the next turn,
        # not at its next cycle, so a user's first jobs wait for no provision_interval_s
        self.work_arrived = False

    # ---- setting up ---------------------------------------------------------------------------
    def claim(self) -> None:
        """Hold the data directory (ServiceError if another tower does); open() does it if not done."""
        if self.lock is None:
            self.lock = claim_data_dir(self.data_dir)

    def open(self) -> None:
        self.claim()
        if self.tower_config.curve:
            create_keys(self.data_dir / "keys")
        self.token = ensure_token(self.data_dir)
        self.store.open()
        self.tower = Tower(self.store, self.tower_config, self.data_dir)
        self.tower.load()
        self.provisioner = Provisioner(self.tower, self.queues, self.data_dir, log_level=self.log_level)

    def add_workload(self, workload: Workload) -> list[int]:
        """Store a workload's tasks (each once: a task already stored under this workload is kept)."""
        ids = []
        for task in workload.tasks:
            if self.store.task_exists(workload.name, task.name):
                raise ServiceError(f"task {task.name!r} of workload {workload.name!r} is already in this store")
        for task in workload.tasks:
            task_id = self.store.add_task(task, workload.name)
            self.tower.book.add_task(task_id, task.name, task)
            if task.event_service:
                self.tower.ranges.add_task(task_id, task, fresh=True)
            ids.append(task_id)
        self.work_arrived = True
        settle()  # a large workload's records are not gone over by every later full collection
        return ids

    async def start(self, workload: Workload | None = None) -> None:
        """Listen for relays, send out the first workers, then serve the API. A ``workload`` given
        here is stored after its first worker is on its way: a worker takes longer to start (MPI,
        the ranks' imports) than a big workload takes to store, and the relay's first messages wait
        in the socket until the tower reads them, after the workload is stored and committed.
        StoreWriteError if the store cannot be written."""
        with self.store.writable():
            await self._start(workload)

    async def _start(self, workload: Workload | None) -> None:
        await self.tower.start()
        # workers of an earlier life that are gone: their jobs return; then the first workers go out
        # before the API starts, so their start-up overlaps with ours
        coming = None
        if workload is not None:
            coming = [(t.cores, t.memory_mb, t.n_jobs if not t.event_service else
                       sum(len(t.job_grid(i)) for i in range(t.n_jobs))) for t in workload.tasks]
        await self.provisioner.cycle(coming)
        if workload is not None:
            try:
                self.add_workload(workload)
            except sqlite3.OperationalError:
                raise  # nothing more can be written: the caller stops what was sent out
            except BaseException:
                await self.shutdown()  # the worker just sent out is stopped, not left running
                raise
            self.work_arrived = False  # the cycle above counted it already
        if self.api_bind:
            from .api import start_api

            self.api = await start_api(self, self.api_bind)
        self.write_info()

    def write_info(self) -> None:
        info = {"pid": os.getpid(), "tower": self.tower.worker_address, "api": self.api.url if self.api else None,
                "started": time.time(), "data_dir": str(self.data_dir)}
        tmp = self.data_dir / f".{INFO_NAME}.tmp"
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(self.data_dir / INFO_NAME)

    async def cancel_worker(self, worker_id: str) -> bool:
        """Cancel one worker's batch job (its jobs return to the pool when it is seen gone)."""
        row = next((w for w in self.store.workers(live_only=True) if w["worker_id"] == worker_id), None)
        if row is None or not row["batch_id"] or row["launcher"] == "external":
            return False
        await asyncio.to_thread(self.provisioner.launcher(row["launcher"], row["queue"]).cancel, [row["batch_id"]])
        self.store.log("worker", worker_id=worker_id, detail="cancel requested by user")
        return True

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.interrupt)
        loop.add_signal_handler(signal.SIGTERM, self.interrupt)

    def interrupt(self) -> None:
        self.interrupted += 1
        if self.interrupted == 1:
            logger.warning("interrupted: stopping workers (their running jobs go back to the pool)")
            self.stop_requested = True
            self.tower.stopping = True
            self.tower.stop_workers("tower shutting down")
            self.tower.flush()

    # ---- running ------------------------------------------------------------------------------
    async def serve(self, until_done: bool, tick=None) -> None:
        """Serve until interrupted, or (until_done) until every job is final and workers have left.

        If the store cannot be written (a full disk, a quota), StoreWriteError at once: the tower holds
        in memory what it could not commit, so it stops serving, and its workers are left as a tower
        crash leaves them (they hold their reports until a tower on the same store takes them)."""
        with self.store.writable():
            await self._serve(until_done, tick)

    async def _serve(self, until_done: bool, tick) -> None:
        settle()  # what start-up loaded (a workload of 10^5-10^6 jobs or ranges among it) stays put
        next_cycle = time.monotonic() + self.provision_interval_s  # start() ran the first cycle
        while True:
            await self.tower.turn(timeout_ms=50)
            if self.store.failed is not None:  # an API call could not write
                raise self.store.failed
            now = time.monotonic()
            if until_done and self.tower.done() and self.provisioner.cheap_status():
                next_cycle = now  # all done: notice the last local worker leave at once, not a cycle later
            if (now >= next_cycle or self.work_arrived) and not self.stop_requested:
                self.work_arrived = False
                await self.provisioner.cycle()
                next_cycle = now + self.provision_interval_s
            if tick:
                tick()
            if self.stop_requested or self.provisioner.error:
                break
            if until_done and self.tower.done() and not self.store.workers(live_only=True):
                break
        await self.shutdown()

    async def shutdown(self, wait_s: float = 30.0) -> None:
        """Stop workers (jobs they hold return to the pool), cancel what remains, close the store."""
        self.tower.stop_workers("tower shutting down")
        self.tower.flush()
        deadline = time.monotonic() + wait_s
        turns = 0
        while self.tower.workers and time.monotonic() < deadline and self.interrupted < 2:
            await self.tower.turn(timeout_ms=50)
            turns += 1
            if turns % 10 == 0:
                await self.provisioner.watch()
        await self.provisioner.cancel_all()
        for row in self.store.workers(live_only=True):
            self.tower.worker_ended(row["worker_id"], "cancelled", "tower shut down")
        self.tower.flush()
        for launcher in self.provisioner.launchers.values():
            if hasattr(launcher, "reap_all"):  # local workers: gone before we return
                await asyncio.to_thread(launcher.reap_all)

    def close(self) -> None:
        if self.lock is None:
            return  # never held the directory: nothing here is ours to close or remove
        try:
            if self.tower:
                self.tower.close()
            self.store.close()
            (self.data_dir / INFO_NAME).unlink(missing_ok=True)
        finally:
            self.lock.release()
            self.lock = None
