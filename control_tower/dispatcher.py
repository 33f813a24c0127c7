"""In-memory matchmaking of ready jobs to free resources, without a table scan per request.

Ready jobs wait in one FIFO per task; tasks are visited by priority, and among equal priorities the
widest jobs first (they are the hardest to place late: small jobs then fill the gaps they leave). A request takes jobs until the
cores it asked for are covered, skipping tasks whose jobs need more cores, memory or walltime than
the worker can give. Cost: the number of tasks plus the number of jobs handed out.
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
        self.ready: dict[int, deque[int]] = {}
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
        self._withdrawn.discard(job_id)
        (self.ready[task_id].appendleft if front else self.ready[task_id].append)(job_id)
        self._count += 1
        self._live[task_id] += 1

    def extend(self, task_id: int, job_ids) -> None:
        queue = self.ready[task_id]
        before = len(queue)
        queue.extend(job_ids)
        self._count += len(queue) - before
        self._live[task_id] += len(queue) - before

    def withdraw(self, task_id: int, job_id: int) -> None:
        """Take a ready job out (killed before it ran); removed lazily when reached."""
        self._withdrawn.add(job_id)
        self._count -= 1
        self._live[task_id] -= 1

    def __len__(self) -> int:
        return self._count

    def take(self, cores: int, max_job_cores: int, max_job_memory_mb: int,
             remaining_s: float | None = None) -> list[tuple[int, int]]:
        """(task_id, job_id) pairs covering up to ``cores`` cores, highest priority first."""
        taken: list[tuple[int, int]] = []
        budget = cores
        for _, _, task_id in self._order:
            if budget <= 0:
                break
            slot = self.tasks[task_id]
            queue = self.ready[task_id]
            if not queue or slot.cores > max_job_cores or slot.memory_mb > max_job_memory_mb:
                continue
            if remaining_s is not None and slot.walltime_s + self.walltime_margin_s > remaining_s:
                continue
            while queue and budget > 0:
                job_id = queue.popleft()
                if job_id in self._withdrawn:
                    self._withdrawn.discard(job_id)
                    continue
                taken.append((task_id, job_id))
                self._count -= 1
                self._live[task_id] -= 1
                budget -= slot.cores
        return taken

    def ready_cores(self) -> int:
        """Cores the ready jobs need, all together."""
        return sum(n * self.tasks[t].cores for t, n in self._live.items())

    def fits_any(self, max_job_cores: int, max_job_memory_mb: int, remaining_s: float | None = None) -> bool:
        """Whether any ready job could run on a worker this size with this much time left."""
        return any(self._live[t] > 0 and s.cores <= max_job_cores and s.memory_mb <= max_job_memory_mb
                   and (remaining_s is None or s.walltime_s + self.walltime_margin_s <= remaining_s)
                   for t, s in self.tasks.items())

    def unfit_tasks(self, max_job_cores: int, max_job_memory_mb: int, remaining_s: float | None) -> list[int]:
        """Tasks with ready jobs that a worker this size could never run."""
        return [t for t, s in self.tasks.items() if self._live[t] > 0 and (
            s.cores > max_job_cores or s.memory_mb > max_job_memory_mb
            or (remaining_s is not None and s.walltime_s + self.walltime_margin_s > remaining_s))]
