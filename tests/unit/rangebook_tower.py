"""A tower's store, job book and range book, as the tower holds them, for the range-book tests."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from control_tower.dispatcher import Dispatcher
from control_tower.jobs import JobBook
from control_tower.ranges import RangeBook
from control_tower.store import Store
from control_tower.workload import TaskSpec
from hpc_edge import protocol as p

STATES = ("ready", "assigned", "running", "finished", "failed")


def es_task(**kw) -> TaskSpec:
    # 10 events, 4 per job, 3 per range: job 1 = [0-2] [3], job 2 = [4-6] [7], job 3 = [8-9]
    return TaskSpec(**({"name": "toysim", "command": "sim --job {job_id} --i {index}", "event_service": True,
                        "events": 10, "events_per_job": 4, "events_per_range": 3, "max_attempts": 2,
                        "cores": 2, "memory_mb": 500, "walltime": 600, "env": {"MODE": "es"}} | kw))


def ev(range_id: str, state: str, job_id: int | None = None, **kw) -> p.RangeEvent:
    if job_id is None:
        job_id = int(range_id.split("-")[1])
    return p.RangeEvent(range_id=range_id, job_id=job_id, state=state, t=1000.0, **kw)


class Tower:
    """A store with a job book and a range book over it, as the tower holds them."""

    def __init__(self, path: Path, data_dir: Path):
        self.data_dir = data_dir
        self.store = Store(path).open()
        self.dispatcher = Dispatcher(walltime_margin_s=60)
        self.jobs = JobBook(self.store, self.dispatcher, data_dir / "jobs")
        self.ranges = RangeBook(self.jobs, data_dir / "outputs")

    def add(self, spec: TaskSpec, workload: str = "wl") -> int:
        """As control_tower/service.py adds a workload's task."""
        task_id = self.store.add_task(spec, workload)
        self.jobs.add_task(task_id, spec.name, spec)
        self.ranges.add_task(task_id, spec, fresh=True)
        return task_id

    def load(self) -> "Tower":
        """As control_tower/tower.py loads a store at start."""
        self.jobs.load()
        for task_id, (_, spec) in self.jobs.tasks.items():
            if spec.event_service:
                self.ranges.add_task(task_id, spec)
        return self

    def take(self, worker_id: str, n: int) -> list[str]:
        ranges, _ = self.ranges.take(worker_id, n)
        return [r.range_id for r in ranges]

    def save(self) -> None:
        self.ranges.flush()
        self.store.commit()

    def rows(self) -> dict[tuple[int, int], tuple]:
        """(job, range) -> (state, attempt, worker_id) as stored."""
        return {(j, n): (s, a, w) for j, n, s, a, w in self.store.db.execute(
            "SELECT job_id, range_idx, state, attempt, worker_id FROM ranges ORDER BY job_id, range_idx")}

    def row(self, job_id: int, idx: int) -> dict:
        cur = self.store.db.execute("SELECT * FROM ranges WHERE job_id=? AND range_idx=?", (job_id, idx))
        return dict(zip([c[0] for c in cur.description], cur.fetchone()))

    def states(self) -> dict[tuple[int, int], str]:
        return {k: v[0] for k, v in self.rows().items()}

    def job_states(self) -> dict[int, str]:
        return {j: s for j, _, s, _ in self.store.job_states()}

    def check_counts(self) -> None:
        """Every range is in exactly one state, the book agrees with the store, and so do the jobs."""
        self.save()
        for job_id, es in self.ranges.es.items():
            stored = Counter(s for (j, _), s in self.states().items() if j == job_id)
            assert sum(es.counts[s] for s in STATES) == es.total == sum(stored.values())
            assert {s: n for s, n in es.counts.items() if n} == dict(stored)
            assert es.counts["ready"] == len(es.ready)
        assert dict(self.jobs.totals()) == dict(Counter(self.job_states().values()))
