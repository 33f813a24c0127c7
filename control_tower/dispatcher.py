"""In-memory matchmaking of ready jobs to free resources, without a table scan per request.

Ready jobs wait in one FIFO per task; tasks are visited by priority, and among equal priorities the
widest jobs first (they are the hardest to place late: small jobs then fill the gaps they leave). A request takes jobs until the
cores it asked for are covered, skipping tasks whose jobs need more cores, memory or walltime than
the worker can give. Cost: the number of tasks plus the number of jobs handed out.

A task's queue holds runs of consecutive job ids, ``[first, stop)``, not one entry per job: a task's
jobs are stored with consecutive ids, so a million ready jobs are a handful of runs. That keeps the
tower small and keeps its full garbage collections short (a deque of a million ints is walked by each).
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass
class TaskSlot:
    task_id: int
    priority: int
    cores: int
    memory_mb: int
    walltime_s: float


class Dispatcher:
    def __init__(self, walltime_margin_s: float = 60.0):
        self.walltime_margin_s = walltime_margin_s
        self.tasks: dict[int, TaskSlot] = {}
        self.ready: dict[int, deque[tuple[int, int]]] = {}  # task id -> runs [first, stop) of ready job ids
        self._order: list[tuple[int, int, int]] = []  # (-priority, -cores, task_id), sorted
        self._withdrawn: set[int] = set()
        self._live: dict[int, int] = {}  # task id -> ready jobs not withdrawn
        self._count = 0

    def add_task(self, task_id: int, priority: int, cores: int, memory_mb: int, walltime_s: float) -> None:
        self.tasks[task_id] = TaskSlot(task_id, priority, cores, memory_mb, walltime_s)
        self.ready.setdefault(task_id, deque())
        self._live.setdefault(task_id, 0)
        bisect.insort(self._order, (-priority, -cores, task_id))

    def push(self, task_id: int, job_id: int, front: bool = False) -> None:
        """Make a job ready; a job coming back (retry, preemption) goes to the front of its task."""
        if job_id in self._withdrawn:
            # withdrawn while ready, and its entry is still queued (withdrawal is lazy): revive that
            # entry rather than queue the job a second time, which would hand it out twice
            self._withdrawn.discard(job_id)
            self._count += 1
            self._live[task_id] += 1
            return
        queue = self.ready[task_id]
        if front:
            if queue and queue[0][0] == job_id + 1:
                queue[0] = (job_id, queue[0][1])
            else:
                queue.appendleft((job_id, job_id + 1))
        elif queue and queue[-1][1] == job_id:
            queue[-1] = (queue[-1][0], job_id + 1)
        else:
            queue.append((job_id, job_id + 1))
        self._count += 1
        self._live[task_id] += 1

    def extend(self, task_id: int, job_ids) -> None:
        queue = self.ready[task_id]
        n = 0
        first = stop = None
        if queue:
            first, stop = queue.pop()
        for job_id in job_ids:
            n += 1
            if job_id == stop:
                stop += 1
                continue
            if first is not None:
                queue.append((first, stop))
            first, stop = job_id, job_id + 1
        if first is not None:
            queue.append((first, stop))
        self._count += n
        self._live[task_id] += n

    def withdraw(self, task_id: int, job_id: int) -> None:
        """Take a ready job out (killed before it ran); removed lazily when reached."""
        self._withdrawn.add(job_id)
        self._count -= 1
        self._live[task_id] -= 1

    def __len__(self) -> int:
        return self._count

    def take(self, cores: int, max_job_cores: int, max_job_memory_mb: int,
             remaining_s: float | None = None, holes: list[int] | tuple = ()) -> list[tuple[int, int]]:
        """(task_id, job_id) pairs covering up to ``cores`` cores, highest priority first.

        ``holes`` are free cores of single ranks (part of ``cores``): each is filled first, largest
        hole first, with the first jobs in this order that fit it, so narrow jobs backfill what wide
        ones leave; the rest of ``cores`` is then covered as usual (prefetch)."""
        taken: list[tuple[int, int]] = []
        budget = cores
        if holes:
            budget -= sum(holes)
            for hole in sorted(holes, reverse=True):
                while hole > 0:
                    got = self._take_one(min(hole, max_job_cores), max_job_memory_mb, remaining_s)
                    if got is None:
                        break
                    taken.append(got)
                    hole -= self.tasks[got[0]].cores
            if budget <= 0:
                return taken
        for _, _, task_id in self._order:
            if budget <= 0:
                break
            slot = self.tasks[task_id]
            queue = self.ready[task_id]
            if not queue or not self._fits(slot, max_job_cores, max_job_memory_mb, remaining_s):
                continue
            withdrawn = self._withdrawn
            per_job = slot.cores
            n = 0
            while queue and budget > 0:
                first, stop = queue[0]
                want = -(-budget // per_job)  # jobs that cover the budget
                end = min(stop, first + want)
                if end == stop:
                    queue.popleft()
                else:
                    queue[0] = (end, stop)
                if withdrawn:
                    for job_id in range(first, end):
                        if job_id in withdrawn:
                            withdrawn.discard(job_id)
                            continue
                        taken.append((task_id, job_id))
                        n += 1
                        budget -= per_job
                else:
                    taken.extend((task_id, job_id) for job_id in range(first, end))
                    n += end - first
                    budget -= (end - first) * per_job
            self._count -= n
            self._live[task_id] -= n
        return taken

    def _take_one(self, max_cores: int, max_memory_mb: int, remaining_s: float | None) -> tuple[int, int] | None:
        """The first ready job, in dispatch order, that fits ``max_cores`` (withdrawn ones skipped)."""
        for _, _, task_id in self._order:
            if not self._live[task_id] or not self._fits(self.tasks[task_id], max_cores, max_memory_mb, remaining_s):
                continue
            queue = self.ready[task_id]
            while queue:
                first, stop = queue[0]
                if first + 1 == stop:
                    queue.popleft()
                else:
                    queue[0] = (first + 1, stop)
                if first in self._withdrawn:
                    self._withdrawn.discard(first)
                    continue
                self._count -= 1
                self._live[task_id] -= 1
                return task_id, first
        return None

    def _fits(self, slot: TaskSlot, max_cores: int, max_memory_mb: int, remaining_s: float | None) -> bool:
        """Whether a task's jobs fit a rank this size with this much time left."""
        return slot.cores <= max_cores and slot.memory_mb <= max_memory_mb and (
            remaining_s is None or slot.walltime_s + self.walltime_margin_s <= remaining_s)

    def ready_cores(self) -> int:
        """Cores the ready jobs need, all together."""
        return sum(n * self.tasks[t].cores for t, n in self._live.items())

    def fits_any(self, max_job_cores: int, max_job_memory_mb: int, remaining_s: float | None = None) -> bool:
        """Whether any ready job could run on a worker this size with this much time left."""
        return any(self._live[t] > 0 and self._fits(s, max_job_cores, max_job_memory_mb, remaining_s)
                   for t, s in self.tasks.items())

    def unfit_tasks(self, max_job_cores: int, max_job_memory_mb: int, remaining_s: float | None) -> list[int]:
        """Tasks with ready jobs that a worker this size could never run."""
        return [t for t, s in self.tasks.items()
                if self._live[t] > 0 and not self._fits(s, max_job_cores, max_job_memory_mb, remaining_s)]
