"""The tower's book of event ranges for event-service jobs.

Ranges go ``ready -> assigned -> running -> finished | failed``; a range whose worker disappears, or
whose allocation ends, goes back to ``ready`` without using up an attempt; a range whose payload
failed goes back with its attempt counted, and is failed for good after ``max_attempts``. When every
range of a job is final the job is ``merging`` (its outputs are merged off the loop), then
``finished`` (or ``failed`` if some ranges failed for good). Range ids: task-job-file-range-attempt.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

from hpc_edge import protocol as p
from hpc_edge.errors import ErrorCode

from .jobs import JobBook, counts_as_attempt
from .workload import RangeGrid, TaskSpec, render_command

logger = logging.getLogger(__name__)

FINAL = ("finished", "failed")


@dataclass
class ESJob:
    job_id: int
    task_id: int
    idx: int
    geometry: RangeGrid  # where each of its ranges lies
    ready: deque = field(default_factory=deque)
    counts: Counter = field(default_factory=Counter)
    attempts: dict[int, int] = field(default_factory=dict)  # range idx -> attempt (when > 1)
    state: str = "activated"
    total: int = field(init=False)  # its number of ranges (len(geometry), read on every range's end)
    id_prefix: str = field(init=False)  # of its range ids: task-job-file-, then range-attempt

    def __post_init__(self):
        self.total = len(self.geometry)
        self.id_prefix = f"{self.task_id}-{self.job_id}-{self.geometry.file_idx}-"

    def range_id(self, idx: int, attempt: int) -> str:
        """``task-job-file-range-attempt`` (parse_range_id reads it back)."""
        return f"{self.id_prefix}{idx}-{attempt}"


class RangeBook:
    def __init__(self, jobs: JobBook, outputs_dir: Path):
        self.jobs_book, self.store = jobs, jobs.store
        self.outputs_dir = Path(outputs_dir)
        self.es: dict[int, ESJob] = {}
        self.order: list[int] = []             # ES jobs by (priority, id): where ready ranges are taken from
        self.held: dict[tuple[int, int], tuple[str, int, str]] = {}  # (job, range) -> (worker, attempt, state)
        self.by_worker: dict[str, set[tuple[int, int]]] = {}
        self.worker_jobs: dict[str, set[int]] = {}
        self.to_merge: list[int] = []
        self._writes: list[tuple] = []  # in order: set_ranges rows, and finish_ranges rows (shorter)
        self._assigns: list[list] = []  # [attempt, worker_id, t, job_id, first idx, last idx], written before _writes
        self.stale_events = 0

    # ---- loading ------------------------------------------------------------------------------
    def add_task(self, task_id: int, spec: TaskSpec, fresh: bool = False) -> None:
        """Load the ranges of an event-service task: ``fresh`` just stored (all ready), else reloaded
        after a restart with each range's state from the store. Where each range lies comes from the
        spec, which fixed it when the task was stored."""
        rows = self.store.db.execute("SELECT job_id, idx, state FROM jobs WHERE task_id=? ORDER BY job_id",
                                     (task_id,)).fetchall()
        jobs: dict[int, ESJob] = {}
        for job_id, idx, state in rows:
            jobs[job_id] = ESJob(job_id, task_id, idx, spec.job_grid(idx), state=state)
        if fresh:
            for es in jobs.values():
                es.ready.extend(range(es.total))
                es.counts["ready"] = es.total
        else:
            for job_id, n, state, attempt, worker_id in self.store.range_states(task_id):
                es = jobs[job_id]
                if attempt > 1:
                    es.attempts[n] = attempt
                if state in ("assigned", "running"):
                    self._hold(worker_id, job_id, n, attempt, state)
                if state == "ready":
                    es.ready.append(n)
                es.counts[state] += 1
        for job_id, es in jobs.items():
            self.es[job_id] = es
            self.order.append(job_id)
            if es.state in ("running", "merging", "activated") and es.counts["ready"] == 0 and \
                    es.counts["assigned"] + es.counts["running"] == 0:
                self.to_merge.append(job_id)
        prio = {t: spec.priority for t, (_, spec) in self.jobs_book.tasks.items()}
        self.order.sort(key=lambda j: (-prio[self.es[j].task_id], j))

    def _hold(self, worker_id: str, job_id: int, n: int, attempt: int, state: str) -> None:
        self.held[(job_id, n)] = (worker_id, attempt, state)
        self.by_worker.setdefault(worker_id, set()).add((job_id, n))
        self.worker_jobs.setdefault(worker_id, set()).add(job_id)

    def _unhold(self, job_id: int, n: int):
        worker_id, attempt, state = self.held.pop((job_id, n))
        held = self.by_worker.get(worker_id)
        if held is not None:
            held.discard((job_id, n))
        return worker_id, attempt, state

    # ---- dispatch -----------------------------------------------------------------------------
    @property
    def ready_count(self) -> int:
        return sum(len(self.es[j].ready) for j in self.order)

    def fits_any(self, max_job_cores: int, max_job_memory_mb: int) -> bool:
        """Whether a worker this size could run a payload of some job with ready ranges."""
        for job_id in self.order:
            es = self.es[job_id]
            if es.ready:
                task = self.jobs_book.tasks[es.task_id][1]
                if task.cores <= max_job_cores and task.memory_mb <= max_job_memory_mb:
                    return True
        return False

    def held_by(self, worker_id: str) -> int:
        return len(self.by_worker.get(worker_id, ()))

    def take(self, worker_id: str, n: int) -> tuple[list[p.RangeSpec], list[p.JobSpec]]:
        ranges, specs = [], []
        now = time.time()
        if self._writes:
            self.flush()  # assignments are written before later changes: keep earlier changes before them
        for job_id in self.order:
            if n <= 0:
                break
            es = self.es[job_id]
            if not es.ready:
                continue
            task_name, task = self.jobs_book.tasks[es.task_id]
            specs.append(self.job_spec(es, task_name, task))
            if es.state == "activated":
                self.set_job(es, "running", now)
            g, construct = es.geometry, p.RangeSpec
            f = task.files[g.file_idx] if task.files else None
            lfn, guid, scope = (f.name, f.guid, f.scope) if f else ("", "", "")
            prefix, attempts, ready = es.id_prefix, es.attempts, es.ready
            assigns = self._assigns
            take = min(n, len(ready))
            for _ in range(take):
                idx = ready.popleft()
                attempt = attempts.get(idx, 1)
                first, last = g.events(idx)
                ranges.append(construct(f"{prefix}{idx}-{attempt}", job_id, first, last, lfn, guid, scope))
                self._hold(worker_id, job_id, idx, attempt, "assigned")
                run = assigns[-1] if assigns else None
                if run is not None and run[5] == idx - 1 and run[0] == attempt and run[3] == job_id \
                        and run[1] == worker_id and run[2] == now:
                    run[5] = idx  # consecutive ranges are written as one run
                else:
                    assigns.append([attempt, worker_id, now, job_id, idx, idx])
            es.counts["ready"] -= take
            es.counts["assigned"] += take
            n -= take
        return ranges, specs

    def job_spec(self, es: ESJob, task_name: str, task: TaskSpec) -> p.JobSpec:
        inputs = task.job_inputs(es.idx)
        return p.JobSpec(
            job_id=es.job_id, task_id=es.task_id, attempt=1, dispatch=1,
            command=render_command(task.command, index=es.idx, inputs=inputs, job_id=es.job_id, attempt=1,
                                   task=task_name, workload_dir=task.workload_dir),
            cores=task.cores, memory_mb=task.memory_mb, walltime_s=task.walltime,
            workdir=str(self.jobs_book.jobs_dir / task_name / str(es.job_id)), env=dict(task.env),
            event_service=True, output_dir=str(self.output_dir(task_name, es.job_id)))

    def output_dir(self, task_name: str, job_id: int) -> Path:
        return self.outputs_dir / task_name / str(job_id)

    def exhausted(self, worker_id: str) -> list[int]:
        """Jobs this worker had ranges of that have no ready range left."""
        return sorted(j for j in self.worker_jobs.get(worker_id, ()) if not self.es[j].ready)

    # ---- events -------------------------------------------------------------------------------
    def apply(self, worker_id: str, e: p.RangeEvent) -> None:
        key = parse_range_id(e.range_id)
        held = self.held.get(key[:2]) if key else None
        if held is None or held[0] != worker_id or held[1] != key[2] or e.job_id != key[0]:
            self.stale_events += 1
            return
        job_id, idx, attempt = key
        es = self.es[job_id]
        if e.state == "running":
            if held[2] == "assigned":
                self.held[(job_id, idx)] = (worker_id, attempt, "running")
                self._count(es, "assigned", "running")
                self._write(e, "running", attempt, worker_id, job_id, idx)
            return
        self.end_range(es, idx, e.state, e, worker_id)

    def end_range(self, es: ESJob, idx: int, state: str, e: p.RangeEvent, worker_id: str) -> None:
        _, attempt, old = self._unhold(es.job_id, idx)
        task = self.jobs_book.tasks[es.task_id][1]
        if state == "preempted" or (state == "failed" and not counts_as_attempt(e.error_code)):
            new, next_attempt = "ready", attempt
        elif state == "failed" and attempt < task.max_attempts:
            new, next_attempt = "ready", attempt + 1
        else:
            new, next_attempt = state, attempt
        self._count(es, old, new)
        if new == "finished" and e.exit_code is None and e.signal is None and e.error_code is None \
                and e.error_diag is None:
            self._writes.append((e.rank, e.host, e.output, e.size, e.cpu_s, e.wall_s, e.t, es.job_id, idx))
        else:
            self._write(e, new, next_attempt, worker_id, es.job_id, idx)
        if new == "ready":
            if next_attempt > 1:
                es.attempts[idx] = next_attempt
            es.ready.appendleft(idx)
            if state == "failed":
                self.store.log("range", job_id=es.job_id, worker_id=worker_id,
                               detail=f"range {e.range_id} failed ({e.error_diag}); retrying")
        elif es.counts["finished"] + es.counts["failed"] == es.total:
            self.set_job(es, "merging", time.time())
            self.to_merge.append(es.job_id)

    def release_worker(self, worker_id: str, code: ErrorCode, diag: str) -> int:
        keys = sorted(self.by_worker.pop(worker_id, ()))
        now = time.time()
        for job_id, idx in keys:
            attempt = self.held[(job_id, idx)][1]
            es = self.es[job_id]
            e = p.RangeEvent(range_id=es.range_id(idx, attempt), job_id=job_id,
                             state="preempted", t=now, error_code=int(code), error_diag=diag)
            self.end_range(es, idx, "preempted", e, worker_id)
        self.by_worker.pop(worker_id, None)
        self.worker_jobs.pop(worker_id, None)
        return len(keys)

    def reconcile(self, worker_id: str, holding: set[str]) -> int:
        """Ranges assigned to a (re)connecting relay that it does not know go back to ready."""
        now, n = time.time(), 0
        for job_id, idx in sorted(self.by_worker.get(worker_id, ())):
            _, attempt, _ = self.held[(job_id, idx)]
            es = self.es[job_id]
            range_id = es.range_id(idx, attempt)
            if range_id not in holding:
                e = p.RangeEvent(range_id=range_id, job_id=job_id, state="preempted", t=now,
                                 error_code=int(ErrorCode.LOST_WORKER), error_diag="assigned but not received")
                self.end_range(es, idx, "preempted", e, worker_id)
                n += 1
        return n

    # ---- bookkeeping --------------------------------------------------------------------------
    def _count(self, es: ESJob, old: str, new: str) -> None:
        es.counts[old] -= 1
        es.counts[new] += 1

    def _write(self, e: p.RangeEvent, state: str, attempt: int, worker_id: str, job_id: int, idx: int) -> None:
        self._writes.append((state, attempt, worker_id, e.rank, e.host, e.output, e.size, e.cpu_s, e.wall_s,
                             e.exit_code, e.signal, e.error_code, e.error_diag, e.t, job_id, idx))

    def flush(self) -> None:
        """Write the queued range changes into the store's open transaction."""
        if self._assigns:
            self.store.assign_ranges(self._assigns)
            self._assigns = []
        if self._writes:
            # runs of one kind, in the order they were queued (a range's 'running' before its end)
            writes, self._writes = self._writes, []
            for n, rows in groupby(writes, key=len):
                (self.store.finish_ranges if n == _FINISH_ROW else self.store.set_ranges)(list(rows))

    def set_job(self, es: ESJob, state: str, t: float, fields: dict | None = None) -> None:
        self.jobs_book._move(es.task_id, es.state, state)
        es.state = state
        self.store.set_job_state(es.job_id, state, t, fields or {})

    def range_totals(self) -> Counter:
        total = Counter()
        for es in self.es.values():
            total.update({k: v for k, v in es.counts.items() if v})
        return total


_FINISH_ROW = 9  # the length of a finish_ranges row (set_ranges rows have 16)
_RANGE_ID = re.compile(r"[0-9]+-([0-9]+)-[0-9]+-([0-9]+)-([0-9]+)")


def parse_range_id(range_id: str) -> tuple[int, int, int] | None:
    """(job id, range index, attempt) from ``task-job-file-range-attempt``, or None if malformed."""
    m = _RANGE_ID.fullmatch(range_id)
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3])
