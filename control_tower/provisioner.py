"""The provisioner: sizes and submits workers (MPI jobs) to the batch system, and watches them.

Each cycle it asks the batch system for the states of all live workers in one call, ends the ones
that are gone (their jobs return to the pool), and submits new workers for ready work that fits a
queue, never beyond the queue's limits.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from launchers import BatchState, Launcher, LauncherError, WorkerSpec, get_launcher

from .tower import Tower
from .workload import parse_duration

logger = logging.getLogger(__name__)

QUICK_FAILURE_S = 60.0  # a worker failing this soon after its hello counts as a failed start


class QueueConfig(BaseModel):
    """One kind of worker the tower may submit (a partition/queue of the site)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="local", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    launcher: str = Field(default="local", pattern=r"^(local|slurm|pbs|lsf)$")
    nodes: int = Field(default=1, ge=1, description="nodes of a worker (the least, when max_nodes is set)")
    max_nodes: int | None = Field(default=None, ge=1, description="size workers up to this for a big backlog")
    keep_worker_dirs: str = Field(default="all", pattern=r"^(all|logs)$",
                                  description="after a worker ends: keep its directory, or only its logs")
    ranks_per_node: int = Field(default=2, ge=1)
    cores_per_rank: int = Field(default=1, ge=1)
    memory_per_rank_mb: int = Field(default=0, ge=0, description="0: the node's memory / its ranks")
    gpus_per_node: int = Field(default=0, ge=0)
    walltime: float | None = Field(default=None, description="allocation walltime; none: unlimited (local only)")
    max_running: int = Field(default=1, ge=0)
    max_queued: int = Field(default=1, ge=0)
    start_timeout_s: float = Field(default=600.0, gt=0,
                                   description="a worker running this long without reaching the tower is cancelled")
    max_failed_starts: int = Field(default=3, ge=1, description="give up after this many workers in a row die "
                                   "before saying hello, or fail within a minute of it")
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    setup_lines: list[str] = Field(default_factory=list)
    mpi_launch: str | None = None
    warning_signal_s: int = Field(default=90, ge=0)
    walltime_grace_s: float = Field(default=60.0, ge=0)
    extra_directives: list[str] = Field(default_factory=list)
    launcher_options: dict = Field(default_factory=dict)
    scratch: str | None = Field(default=None, description="node-local directory where payloads run (e.g. "
                                "/dev/shm, $TMPDIR); their outputs and logs move to the shared job directory")
    messenger: str = Field(default="zmq", pattern=r"^(zmq|files)$",
                           description="zmq: nodes connect to the tower; files: through the shared filesystem")

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v):
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _batch_needs_walltime(self):
        if self.launcher != "local" and self.walltime is None:
            raise ValueError(f"queue {self.name!r}: a {self.launcher} queue needs a walltime")
        return self

    @model_validator(mode="after")
    def _node_range(self):
        if self.max_nodes is not None and self.max_nodes < self.nodes:
            raise ValueError(f"queue {self.name!r}: max_nodes ({self.max_nodes}) is below nodes ({self.nodes})")
        return self

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    def nodes_for(self, backlog_cores: int) -> int:
        """Nodes for a new worker: enough for the backlog, between nodes and max_nodes."""
        per_node = self.ranks_per_node * self.cores_per_rank
        wanted = -(-backlog_cores // per_node)
        return max(self.nodes, min(self.max_nodes or self.nodes, wanted))


class ProvisionError(Exception):
    """Workers keep dying before they start; the message says where to look."""


class Provisioner:
    def __init__(self, tower: Tower, queues: list[QueueConfig], data_dir: Path,
                 launchers: dict[str, Launcher] | None = None, log_level: str = "INFO"):
        self.tower, self.queues, self.data_dir = tower, queues, Path(data_dir)
        self.launchers = launchers or {}
        self.log_level = log_level
        self.failed_starts: dict[str, int] = {}
        self.error: str | None = None
        self.enabled = True
        self.warned: set[int] = set()
        self.running_since: dict[str, float] = {}
        self.timed_out: set[str] = set()
        tower.on_worker_gone.append(self.sweep)

    def launcher(self, launcher_name: str, queue_name: str | None = None) -> Launcher:
        """The launcher of a queue (built with its options), or a plain one of that kind."""
        queue = next((q for q in self.queues if q.name == queue_name and q.launcher == launcher_name), None)
        key = f"{launcher_name}:{queue.name if queue else ''}"
        if key not in self.launchers:
            self.launchers[key] = get_launcher(launcher_name, **(queue.launcher_options if queue else {}))
        return self.launchers[key]

    def cheap_status(self) -> bool:
        """Whether asking about workers costs nothing worth sparing (local processes, no batch system)."""
        return all(q.launcher == "local" for q in self.queues)

    # ---- the cycle ----------------------------------------------------------------------------
    async def cycle(self, coming: list[tuple[int, int, int]] | None = None) -> None:
        """Watch the workers, then submit those the work needs. ``coming``: (cores, memory_mb, jobs or
        ranges) of tasks about to be stored, counted as if they were (a worker starts while they are)."""
        await self.watch()
        if self.enabled and not self.tower.stopping:
            await self.submit_needed(coming or [])

    async def watch(self) -> None:
        """Ask each launcher about its live workers; end those the batch system says are gone."""
        for (name, queue), rows in self.live_batch_jobs().items():
            try:
                states = await asyncio.to_thread(self.launcher(name, queue).status, [r["batch_id"] for r in rows])
            except LauncherError as exc:
                logger.warning("provisioner: %s", exc)
                continue
            for row in rows:
                self.apply_batch_state(row, states.get(row["batch_id"], BatchState.UNKNOWN))
        self.tower.flush()

    def live_batch_jobs(self) -> dict[tuple[str, str], list[dict]]:
        """Live workers this tower submitted, grouped by (launcher, queue): one status call per group."""
        groups: dict[tuple[str, str], list[dict]] = {}
        for row in self.tower.store.workers(live_only=True):
            if row["launcher"] != "external" and row["batch_id"]:
                groups.setdefault((row["launcher"], row["queue"]), []).append(row)
        return groups

    def apply_batch_state(self, row: dict, state: BatchState) -> None:
        worker_id = row["worker_id"]
        if state is BatchState.QUEUED and row["state"] == "submitted":
            self.tower.store.update_worker(worker_id, state="queued")
        elif state is BatchState.RUNNING and worker_id not in self.tower.workers:
            if row["state"] in ("submitted", "queued"):
                self.tower.store.update_worker(worker_id, state="starting")
            self.check_start(row)
        elif state.terminal:
            self.tower.read_last_words(worker_id)
            if not self.tower.store.worker_live(worker_id):
                return  # it said bye: ended as it said, not as the batch system's state would have it
            never_started = row["started"] is None
            final = {BatchState.DONE: "done", BatchState.CANCELLED: "cancelled"}.get(state, "failed")
            if state is BatchState.UNKNOWN:
                final = "lost"
            self.tower.worker_ended(worker_id, final, f"batch job {row['batch_id']} is {state.value}")
            queue = row["queue"] or ""
            # a worker that fails soon after its hello (a relay crashing at start, a broken node image)
            # counts like one that never said hello: otherwise a crash loop would submit forever
            crashed = final == "failed" and not never_started and time.time() - row["started"] < QUICK_FAILURE_S
            if (never_started and (final != "cancelled" or worker_id in self.timed_out)) or crashed:
                self.failed_starts[queue] = self.failed_starts.get(queue, 0) + 1
                log = self.data_dir / "workers" / worker_id / f"{worker_id}.err"
                how = "failed soon after it reached the tower" if crashed else "ended before it reached the tower"
                logger.error("worker %s %s; see %s", worker_id, how, log)
                limit = next((q.max_failed_starts for q in self.queues if q.name == queue), 3)
                if self.failed_starts[queue] >= limit:
                    self.error = (f"{self.failed_starts[queue]} workers of queue {queue!r} in a row died before "
                                  f"reaching the tower or within {QUICK_FAILURE_S:.0f} s of it; last one's "
                                  f"errors: {log}")
                    self.enabled = False
            elif not never_started:
                self.failed_starts[queue] = 0

    def check_start(self, row: dict) -> None:
        """A batch job that runs but whose relay never reached the tower is cancelled (and counted)."""
        worker_id = row["worker_id"]
        first = self.running_since.setdefault(worker_id, time.monotonic())
        queue = next((q for q in self.queues if q.name == row["queue"]), None)
        if queue is None or time.monotonic() - first < queue.start_timeout_s:
            return
        logger.error("worker %s has run %.0f s without reaching the tower; cancelling it", worker_id,
                     time.monotonic() - first)
        self.timed_out.add(worker_id)
        try:
            self.launcher(row["launcher"], row["queue"]).cancel([row["batch_id"]])
        except LauncherError as exc:
            logger.error("provisioner: %s", exc)

    async def submit_needed(self, coming: list[tuple[int, int, int]] = ()) -> None:
        if not len(self.tower.dispatcher) and not self.tower.ranges.ready_count and not coming:
            return
        live = self.tower.store.workers(live_only=True)
        unfit = None
        for queue in self.queues:
            memory = queue.memory_per_rank_mb or 1 << 40
            usable = None if queue.walltime is None else queue.walltime - queue.walltime_grace_s
            here = set(self.tower.dispatcher.unfit_tasks(queue.cores_per_rank, memory, usable))
            unfit = here if unfit is None else unfit & here
            if not self.tower.dispatcher.fits_any(queue.cores_per_rank, memory, usable) and \
                    not self.tower.ranges.fits_any(queue.cores_per_rank, memory) and \
                    not any(cores <= queue.cores_per_rank and mem <= memory for cores, mem, _ in coming):
                continue
            mine = [w for w in live if w["queue"] == queue.name]
            waiting = [w for w in mine if w["state"] in ("submitted", "queued")]
            if len(mine) >= queue.max_running or len(waiting) >= queue.max_queued:
                continue
            await self.submit(queue, sum(cores * n for cores, _, n in coming))
        self.warn_unfit(unfit or set())

    def warn_unfit(self, task_ids: set[int]) -> None:
        """Say once per task when its jobs fit no queue (cores, memory or walltime): they would wait forever."""
        for task_id in task_ids - self.warned:
            self.warned.add(task_id)
            name, spec = self.tower.book.tasks[task_id]
            why = (f"task {name!r} (id {task_id}) needs {spec.cores} cores, {spec.memory_mb} MB and "
                   f"{spec.walltime:.0f} s + {self.tower.cfg.walltime_margin_s:.0f} s margin per job: no queue offers that")
            logger.error(why)
            self.tower.store.log("task", detail=why)

    async def submit(self, queue: QueueConfig, coming_cores: int = 0) -> str:
        store = self.tower.store
        n = int(store.get_meta("workers_submitted") or 0) + 1
        store.set_meta("workers_submitted", str(n))
        worker_id = f"{queue.name}-{n:05d}"
        nodes = queue.nodes_for(self.tower.dispatcher.ready_cores() + self.tower.ranges.ready_count + coming_cores)
        spec = self.worker_spec(queue, worker_id, nodes)
        store.add_worker(worker_id, queue.launcher, queue.name, nodes, spec.ranks,
                         spec.ranks * queue.cores_per_rank, queue.walltime)
        store.commit()
        try:
            batch_id = await asyncio.to_thread(self.launcher(queue.launcher, queue.name).submit, spec)
        except LauncherError as exc:
            logger.error("provisioner: %s", exc)
            store.update_worker(worker_id, state="failed", ended=time.time())
            store.commit()
            self.failed_starts[queue.name] = self.failed_starts.get(queue.name, 0) + 1
            if self.failed_starts[queue.name] >= queue.max_failed_starts:
                self.error, self.enabled = str(exc), False
            return worker_id
        store.update_worker(worker_id, batch_id=batch_id)
        store.commit()
        return worker_id

    def worker_spec(self, queue: QueueConfig, worker_id: str, nodes: int | None = None) -> WorkerSpec:
        if queue.messenger == "files":
            link = ["--messenger-dir", str(self.tower.messenger.worker_dir(worker_id))]
        else:
            link = ["--tower", self.tower.worker_address]
        command = [sys.executable, "-m", "hpc_edge", "worker", *link,
                   "--worker-id", worker_id, "--cores-per-rank", str(queue.cores_per_rank),
                   "--walltime-grace-s", str(queue.walltime_grace_s), "--start-timeout-s", str(queue.start_timeout_s),
                   "--log-level", self.log_level]
        if queue.memory_per_rank_mb:
            command += ["--memory-per-rank-mb", str(queue.memory_per_rank_mb)]
        if queue.scratch:
            command += ["--scratch", queue.scratch]
        if queue.walltime:
            command += ["--walltime-s", str(int(queue.walltime))]
        if self.tower.cfg.curve and queue.messenger == "zmq":
            command += ["--keys", str(self.data_dir / "keys")]
        return WorkerSpec(
            worker_id=worker_id, command=command, workdir=self.data_dir / "workers" / worker_id,
            nodes=nodes or queue.nodes, ranks_per_node=queue.ranks_per_node, cores_per_rank=queue.cores_per_rank,
            gpus_per_node=queue.gpus_per_node, walltime_s=int(queue.walltime or 86400),
            job_name=f"hpc-edge-{worker_id}", account=queue.account, partition=queue.partition,
            qos=queue.qos, setup_lines=queue.setup_lines, mpi_launch=queue.mpi_launch,
            warning_signal_s=queue.warning_signal_s, extra_directives=queue.extra_directives)

    def sweep(self, worker_id: str) -> None:
        """A worker is over: by its queue's policy, keep only its logs (.out, .err)."""
        row = self.tower.store.db.execute("SELECT queue FROM workers WHERE worker_id=?", (worker_id,)).fetchone()
        queue = next((q for q in self.queues if row and q.name == row[0]), None)
        if queue is None or queue.keep_worker_dirs == "all":
            return
        for path in (self.data_dir / "workers" / worker_id).glob("*"):
            if path.suffix not in (".out", ".err") and path.is_file():
                path.unlink(missing_ok=True)

    # ---- ending -------------------------------------------------------------------------------
    async def cancel_all(self, wait_s: float = 20.0) -> None:
        for (name, queue), rows in self.live_batch_jobs().items():
            ids = [r["batch_id"] for r in rows]
            launcher = self.launcher(name, queue)
            try:
                await asyncio.to_thread(launcher.cancel, ids)
                if hasattr(launcher, "wait"):
                    await asyncio.to_thread(launcher.wait, ids, wait_s)
            except LauncherError as exc:
                logger.error("provisioner: %s", exc)
        await self.watch()
