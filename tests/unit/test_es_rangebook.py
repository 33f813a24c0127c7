"""The tower's book of event ranges over a real SQLite store: handing ranges out, events from relays,
retries, preemption, workers that go away, jobs whose ranges are all final, and what a restarted
tower reads back. Checks look at the ``ranges`` and ``jobs`` rows (what ``hpc-edge jobs`` shows)."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from control_tower.dispatcher import Dispatcher
from control_tower.jobs import JobBook
from control_tower.ranges import RangeBook
from control_tower.store import Store
from control_tower.workload import TaskSpec
from hpc_edge import protocol as p
from hpc_edge.errors import ErrorCode

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


@pytest.fixture
def tower(tmp_path):
    t = Tower(tmp_path / "tower.db", tmp_path)
    yield t
    t.store.close()


# ---- adding a task ----------------------------------------------------------------------------

def test_adding_an_event_service_task_stores_its_ranges_ready(tower):
    task_id = tower.add(es_task())

    rows = tower.store.db.execute("SELECT job_id, range_idx, task_id, file_idx, first_event, last_event, state,"
                                  " attempt, worker_id FROM ranges ORDER BY job_id, range_idx").fetchall()
    assert rows == [(1, 0, task_id, 0, 0, 2, "ready", 1, None), (1, 1, task_id, 0, 3, 3, "ready", 1, None),
                    (2, 0, task_id, 0, 4, 6, "ready", 1, None), (2, 1, task_id, 0, 7, 7, "ready", 1, None),
                    (3, 0, task_id, 0, 8, 9, "ready", 1, None)]
    assert tower.job_states() == {1: "activated", 2: "activated", 3: "activated"}
    assert tower.ranges.ready_count == 5
    assert len(tower.dispatcher) == 0  # event-service jobs are not dispatched whole
    tower.check_counts()


@pytest.mark.parametrize("spec", [
    es_task(),
    es_task(events=1000, events_per_job=333, events_per_range=7),
    es_task(events=5, events_per_job=None, events_per_range=1),
    es_task(events=None, events_per_job=None, events_per_range=4,
            files=[{"name": "a.root", "events": 9}, {"name": "b.root", "events": 4}, {"name": "c.root", "events": 1}]),
], ids=["small", "uneven", "one-job", "files"])
def test_stored_ranges_and_the_fresh_book_match_the_spec_and_a_reload(tmp_path, spec):
    fresh = Tower(tmp_path / "tower.db", tmp_path)
    task_id = fresh.add(spec)
    rows = fresh.store.db.execute("SELECT job_id, range_idx, file_idx, first_event, last_event FROM ranges"
                                  " ORDER BY job_id, range_idx").fetchall()
    expected = [(job_id, n, f, first, last) for job_id, idx in
                fresh.store.db.execute("SELECT job_id, idx FROM jobs ORDER BY job_id").fetchall()
                for n, (f, _, _, _, first, last) in enumerate(spec.job_ranges(idx))]
    assert rows == expected
    assert sum(last - first + 1 for *_, first, last in rows) == (spec.events or sum(f.events for f in spec.files))
    fresh.save()

    again = Tower(tmp_path / "tower.db", tmp_path).load()

    assert again.ranges.es.keys() == fresh.ranges.es.keys()
    for job_id, a in again.ranges.es.items():
        b = fresh.ranges.es[job_id]
        assert (a.task_id, a.idx, a.total, a.state, list(a.ready), list(a.geometry)) == \
            (b.task_id, b.idx, b.total, b.state, list(b.ready), list(b.geometry))
        assert {s: n for s, n in a.counts.items() if n} == {s: n for s, n in b.counts.items() if n} == \
            {"ready": a.total}
    handed_out = [r.range_id for r in again.ranges.take("w1", 10**6)[0]]
    again.store.db.rollback()  # one writer at a time: the first tower takes the same next
    again.store.close()
    assert handed_out == [r.range_id for r in fresh.ranges.take("w1", 10**6)[0]]
    fresh.store.close()


def test_a_plain_task_stores_no_ranges(tower):
    tower.store.add_task(TaskSpec(name="plain", command="run", count=3), "wl")
    assert tower.store.db.execute("SELECT count(*) FROM ranges").fetchone() == (0,)


# ---- handing out ------------------------------------------------------------------------------

def test_take_hands_out_at_most_n_ranges_with_their_jobs(tower, tmp_path):
    tower.add(es_task())

    ranges, specs = tower.ranges.take("w1", 3)

    assert [(r.range_id, r.job_id, r.first_event, r.last_event) for r in ranges] == \
        [("1-1-0-0-1", 1, 0, 2), ("1-1-0-1-1", 1, 3, 3), ("1-2-0-0-1", 2, 4, 6)]
    assert [s.job_id for s in specs] == [1, 2]
    s = specs[0]
    assert (s.task_id, s.event_service, s.command) == (1, True, "sim --job 1 --i 0")
    assert s.output_dir == str(tmp_path / "outputs" / "toysim" / "1")
    assert s.workdir == str(tmp_path / "jobs" / "toysim" / "1")
    assert (s.cores, s.memory_mb, s.walltime_s, s.env) == (2, 500, 600.0, {"MODE": "es"})
    assert specs[1].command == "sim --job 2 --i 1"

    tower.save()
    assert tower.rows() == {(1, 0): ("assigned", 1, "w1"), (1, 1): ("assigned", 1, "w1"),
                            (2, 0): ("assigned", 1, "w1"), (2, 1): ("ready", 1, None), (3, 0): ("ready", 1, None)}
    assert tower.job_states() == {1: "running", 2: "running", 3: "activated"}
    assert (tower.ranges.held_by("w1"), tower.ranges.ready_count) == (3, 2)
    tower.check_counts()


def test_take_gives_what_is_left_then_nothing(tower):
    tower.add(es_task())
    tower.take("w1", 3)

    ranges, specs = tower.ranges.take("w2", 10)
    assert [r.range_id for r in ranges] == ["1-2-0-1-1", "1-3-0-0-1"]
    assert [s.job_id for s in specs] == [2, 3]
    assert tower.ranges.take("w3", 5) == ([], [])
    assert tower.ranges.ready_count == 0
    tower.check_counts()


def test_take_of_zero_ranges_hands_out_nothing(tower):
    tower.add(es_task())
    assert tower.ranges.take("w1", 0) == ([], [])
    assert tower.job_states() == {1: "activated", 2: "activated", 3: "activated"}


def test_ranges_of_input_files_name_the_file(tower):
    tower.add(es_task(events=None, events_per_job=None, events_per_range=100,
                      files=[{"name": "evgen.1.root", "events": 150, "guid": "G-1"},
                             {"name": "evgen.2.root", "events": 20, "guid": "G-2"}]))

    ranges, specs = tower.ranges.take("w1", 5)

    assert [(r.range_id, r.first_event, r.last_event, r.lfn, r.guid) for r in ranges] == \
        [("1-1-0-0-1", 0, 99, "evgen.1.root", "G-1"), ("1-1-0-1-1", 100, 149, "evgen.1.root", "G-1"),
         ("1-2-1-0-1", 0, 19, "evgen.2.root", "G-2")]
    assert [s.command for s in specs] == ["sim --job 1 --i 0", "sim --job 2 --i 1"]


def test_ranges_of_input_files_carry_the_files_scope(tower):
    tower.add(es_task(events=None, events_per_job=None, events_per_range=100,
                      files=[{"name": "evgen.1.root", "events": 150, "guid": "G-1", "scope": "mc23_13p6TeV"}]))

    ranges, _ = tower.ranges.take("w1", 5)

    assert [r.scope for r in ranges] == ["mc23_13p6TeV", "mc23_13p6TeV"]


def test_a_higher_priority_task_is_served_first(tower):
    tower.add(es_task(name="low"))
    tower.add(es_task(name="high", priority=5, events=3, events_per_job=None))

    ranges, specs = tower.ranges.take("w1", 2)

    assert [r.range_id for r in ranges] == ["2-4-0-0-1", "1-1-0-0-1"]
    assert [s.job_id for s in specs] == [4, 1]


# ---- events -----------------------------------------------------------------------------------

def test_running_then_finished_is_stored_with_the_output(tower):
    tower.add(es_task())
    tower.take("w1", 2)

    tower.ranges.apply("w1", ev("1-1-0-0-1", "running", rank=3, host="nid0007"))
    tower.save()
    assert tower.rows()[(1, 0)] == ("running", 1, "w1")
    tower.ranges.apply("w1", ev("1-1-0-0-1", "finished", rank=3, host="nid0007", output="/o/1-1-0-0-1.h5",
                                size=4096, cpu_s=1.5, wall_s=2.0))
    tower.save()

    row = tower.row(1, 0)
    assert (row["state"], row["attempt"], row["worker_id"], row["rank"], row["host"]) == \
        ("finished", 1, "w1", 3, "nid0007")
    assert (row["output"], row["size"], row["cpu_s"], row["wall_s"]) == ("/o/1-1-0-0-1.h5", 4096, 1.5, 2.0)
    assert tower.store.finished_ranges(1) == [(0, 1, 0, 2, "/o/1-1-0-0-1.h5")]
    assert tower.ranges.held_by("w1") == 1
    assert tower.ranges.stale_events == 0
    tower.check_counts()


def test_a_repeated_running_event_changes_nothing(tower):
    tower.add(es_task())
    tower.take("w1", 1)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "running"))
    tower.ranges.apply("w1", ev("1-1-0-0-1", "running"))

    assert tower.ranges.es[1].counts["running"] == 1
    tower.check_counts()


def test_a_failed_range_is_retried_with_its_attempt_counted_then_failed_for_good(tower):
    tower.add(es_task(max_attempts=2))
    tower.take("w1", 1)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "running"))
    tower.ranges.apply("w1", ev("1-1-0-0-1", "failed", error_code=2001, error_diag="ValueError: bad event"))
    tower.save()

    row = tower.row(1, 0)
    assert (row["state"], row["attempt"], row["error_code"], row["error_diag"]) == \
        ("ready", 2, 2001, "ValueError: bad event")
    assert any("1-1-0-0-1 failed" in e["detail"] for e in tower.store.events(job_id=1))
    tower.check_counts()

    ranges, _ = tower.ranges.take("w2", 1)
    assert [(r.range_id, r.first_event, r.last_event) for r in ranges] == [("1-1-0-0-2", 0, 2)]
    tower.ranges.apply("w2", ev("1-1-0-0-2", "failed", error_code=2001, error_diag="again"))
    tower.save()

    assert tower.rows()[(1, 0)] == ("failed", 2, "w2")
    assert tower.ranges.take("w3", 1)[0][0].range_id == "1-1-0-1-1"  # the failed range is not handed out again
    tower.check_counts()


def test_a_range_failed_and_handed_out_again_before_a_commit_is_stored_as_handed_out(tower):
    # the failure (back to ready) and the new hand-out land in one transaction: the store must end with
    # the later one, or a restarted tower would hand the range out a second time
    tower.add(es_task(max_attempts=3))
    tower.take("w1", 1)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "failed", error_code=2001, error_diag="bad event"))
    assert tower.take("w2", 1) == ["1-1-0-0-2"]
    tower.save()

    row = tower.row(1, 0)
    assert (row["state"], row["attempt"], row["worker_id"], row["error_code"]) == ("assigned", 2, "w2", None)
    tower.check_counts()


def test_consecutive_ranges_of_other_attempts_or_workers_are_stored_each_as_handed_out(tower, monkeypatch):
    # hand-outs are written as runs of consecutive ranges: a run must not swallow a neighbour with
    # another attempt, or one handed to another worker at the same instant
    monkeypatch.setattr("control_tower.ranges.time.time", lambda: 1000.0)
    tower.add(es_task(events=6, events_per_job=6, events_per_range=1, max_attempts=3))
    assert tower.take("w1", 2) == ["1-1-0-0-1", "1-1-0-1-1"]
    tower.ranges.apply("w1", ev("1-1-0-1-1", "failed", error_code=2001, error_diag="bad event"))
    assert tower.take("w2", 2) == ["1-1-0-1-2", "1-1-0-2-1"]
    assert tower.take("w3", 2) == ["1-1-0-3-1", "1-1-0-4-1"]
    tower.save()

    assert tower.rows() == {(1, 0): ("assigned", 1, "w1"), (1, 1): ("assigned", 2, "w2"), (1, 2): ("assigned", 1, "w2"),
                            (1, 3): ("assigned", 1, "w3"), (1, 4): ("assigned", 1, "w3"), (1, 5): ("ready", 1, None)}
    tower.check_counts()


@pytest.mark.parametrize("state, code", [
    ("preempted", ErrorCode.WALLTIME_PREEMPTED),
    ("preempted", ErrorCode.WORKER_STOPPED),
    ("failed", ErrorCode.LOST_WORKER),
])
def test_a_range_not_ended_by_its_payload_goes_back_without_using_an_attempt(tower, state, code):
    tower.add(es_task(max_attempts=1))
    tower.take("w1", 1)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "running"))
    tower.ranges.apply("w1", ev("1-1-0-0-1", state, error_code=int(code), error_diag="allocation ends"))
    tower.save()

    assert tower.rows()[(1, 0)][:2] == ("ready", 1)
    assert tower.take("w2", 1) == ["1-1-0-0-1"]
    tower.check_counts()


def test_a_failure_with_a_code_of_its_own_uses_an_attempt(tower):
    tower.add(es_task(max_attempts=1))
    tower.take("w1", 1)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "failed", error_code=int(ErrorCode.KILLED_BY_SIGNAL), signal=9))
    tower.save()

    assert tower.rows()[(1, 0)] == ("failed", 1, "w1")
    assert tower.row(1, 0)["signal"] == 9


def _after_a_retry(tower):
    tower.add(es_task(max_attempts=3))
    tower.take("w1", 2)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "failed", error_code=2001))
    tower.take("w1", 1)  # 1-1-0-0-2


@pytest.mark.parametrize("worker, event", [
    ("w2", ev("1-1-0-1-1", "finished")),                 # a worker that does not hold the range
    ("w1", ev("1-1-0-0-1", "finished")),                 # the attempt that failed
    ("w1", ev("1-1-0-0-3", "finished")),                 # an attempt not yet made
    ("w1", ev("1-2-0-0-1", "running")),                  # a range nobody was given
    ("w1", ev("1-1-0-1-1", "finished", job_id=2)),       # the event's job is not the range id's
    ("w1", ev("1-1-0-1", "finished", job_id=1)),         # malformed range ids
    ("w1", ev("1-1-0-1-1-1", "finished", job_id=1)),
    ("w1", ev("x-1-0-1-1", "finished", job_id=1)),
    ("w1", ev("garbage", "failed", job_id=1, error_code=2001)),
    ("w1", ev("1-9-0-0-1", "finished", job_id=9)),       # a job that does not exist
])
def test_events_that_do_not_match_what_the_tower_handed_out_are_ignored(tower, worker, event):
    _after_a_retry(tower)
    tower.save()
    before = tower.rows()

    tower.ranges.apply(worker, event)
    tower.save()

    assert tower.rows() == before
    assert tower.ranges.stale_events == 1
    tower.check_counts()


def test_an_event_for_a_range_already_finished_is_ignored(tower):
    tower.add(es_task())
    tower.take("w1", 1)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "finished", output="/o/a.h5"))
    tower.ranges.apply("w1", ev("1-1-0-0-1", "failed", error_code=2001))
    tower.save()

    assert tower.rows()[(1, 0)] == ("finished", 1, "w1")
    assert tower.row(1, 0)["output"] == "/o/a.h5"
    assert tower.ranges.stale_events == 1


# ---- workers that go away ---------------------------------------------------------------------

def test_release_worker_returns_all_its_ranges_without_using_attempts(tower):
    tower.add(es_task(max_attempts=3))
    tower.take("w1", 3)
    tower.take("w2", 1)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "failed", error_code=2001))
    tower.take("w1", 1)                                    # 1-1-0-0-2
    tower.ranges.apply("w1", ev("1-1-0-0-2", "running"))
    tower.ranges.apply("w1", ev("1-1-0-1-1", "finished", output="/o/b.h5"))

    n = tower.ranges.release_worker("w1", ErrorCode.LOST_WORKER, "worker w1 lost")
    tower.save()

    assert n == 2
    assert {k: (s, a) for k, (s, a, _) in tower.rows().items()} == {
        (1, 0): ("ready", 2), (1, 1): ("finished", 1), (2, 0): ("ready", 1), (2, 1): ("assigned", 1),
        (3, 0): ("ready", 1)}
    assert tower.rows()[(2, 1)] == ("assigned", 1, "w2")
    assert tower.row(2, 0)["error_code"] == int(ErrorCode.LOST_WORKER)
    assert tower.ranges.held_by("w1") == 0
    assert tower.ranges.exhausted("w1") == []
    assert tower.ranges.release_worker("w1", ErrorCode.LOST_WORKER, "again") == 0
    assert sorted(tower.take("w3", 10)) == ["1-1-0-0-2", "1-2-0-0-1", "1-3-0-0-1"]
    tower.check_counts()


def test_events_from_a_released_worker_are_ignored(tower):
    tower.add(es_task())
    tower.take("w1", 1)
    tower.ranges.release_worker("w1", ErrorCode.WORKER_STOPPED, "stopped")
    tower.take("w2", 1)

    tower.ranges.apply("w1", ev("1-1-0-0-1", "finished", output="/o/late.h5"))
    tower.save()

    assert tower.rows()[(1, 0)] == ("assigned", 1, "w2")
    assert tower.ranges.stale_events == 1


# ---- jobs whose ranges are all final ----------------------------------------------------------

def test_a_job_whose_ranges_are_all_final_goes_to_merging(tower):
    tower.add(es_task(max_attempts=1))
    tower.take("w1", 5)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "finished", output="/o/a.h5"))
    tower.save()
    assert tower.job_states()[1] == "running" and tower.ranges.to_merge == []

    tower.ranges.apply("w1", ev("1-1-0-1-1", "failed", error_code=2001))
    tower.ranges.apply("w1", ev("1-3-0-0-1", "finished", output="/o/c.h5"))
    tower.save()

    assert tower.job_states() == {1: "merging", 2: "running", 3: "merging"}
    assert tower.ranges.to_merge == [1, 3]
    assert tower.ranges.es[1].counts["failed"] == 1
    assert dict(tower.jobs.totals()) == {"merging": 2, "running": 1}
    assert not tower.jobs.all_final()
    tower.check_counts()


def test_exhausted_lists_the_workers_jobs_with_no_ready_range(tower):
    tower.add(es_task())
    tower.take("w1", 3)   # all of job 1, half of job 2
    tower.take("w2", 1)   # the rest of job 2

    assert tower.ranges.exhausted("w1") == [1, 2]
    assert tower.ranges.exhausted("w2") == [2]
    assert tower.ranges.exhausted("w3") == []

    tower.ranges.apply("w2", ev("1-2-0-1-1", "preempted", error_code=int(ErrorCode.WALLTIME_PREEMPTED)))
    assert tower.ranges.exhausted("w1") == [1]


# ---- a restarted tower ------------------------------------------------------------------------

def test_a_restarted_tower_reads_back_the_same_ranges(tmp_path):
    first = Tower(tmp_path / "tower.db", tmp_path)
    first.add(es_task(max_attempts=3))
    first.take("w1", 2)
    first.ranges.apply("w1", ev("1-1-0-0-1", "finished", output="/o/a.h5"))
    first.ranges.apply("w1", ev("1-1-0-1-1", "failed", error_code=2001))   # ready again, attempt 2
    first.take("w2", 2)                                                      # 1-1-0-1-2, 1-2-0-0-1
    first.ranges.apply("w2", ev("1-1-0-1-2", "running"))
    first.take("w3", 2)                                                      # 1-2-0-1-1, 1-3-0-0-1
    first.ranges.apply("w3", ev("1-3-0-0-1", "finished", output="/o/c.h5"))
    first.save()
    before = first.rows()

    again = Tower(tmp_path / "tower.db", tmp_path).load()      # the first one is simply abandoned

    assert again.rows() == before
    assert again.ranges.held == first.ranges.held == {
        (1, 1): ("w2", 2, "running"), (2, 0): ("w2", 1, "assigned"), (2, 1): ("w3", 1, "assigned")}
    for job_id in (1, 2, 3):
        a, b = again.ranges.es[job_id], first.ranges.es[job_id]
        assert (a.total, a.geometry, a.state) == (b.total, b.geometry, b.state)
        assert {s: n for s, n in a.counts.items() if n} == {s: n for s, n in b.counts.items() if n}
    assert again.ranges.to_merge == [3]
    assert again.job_states() == {1: "running", 2: "running", 3: "merging"}
    assert dict(again.jobs.totals()) == dict(first.jobs.totals()) == {"running": 2, "merging": 1}
    assert again.ranges.exhausted("w2") == [1, 2]
    again.check_counts()

    again.ranges.apply("w2", ev("1-1-0-1-2", "finished", output="/o/b.h5"))
    again.ranges.apply("w3", ev("1-2-0-1-1", "running"))
    assert again.ranges.stale_events == 0
    assert again.ranges.to_merge == [3, 1]
    assert again.ranges.release_worker("w2", ErrorCode.LOST_WORKER, "lost") == 1
    assert again.take("w4", 5) == ["1-2-0-0-1"]
    again.check_counts()
    first.store.close()
    again.store.close()


def test_changes_not_flushed_are_not_read_back(tmp_path):
    first = Tower(tmp_path / "tower.db", tmp_path)
    first.add(es_task())
    first.take("w1", 1)
    first.save()
    first.ranges.apply("w1", ev("1-1-0-0-1", "finished", output="/o/a.h5"))
    first.store.commit()  # without flush: the range change is still queued

    again = Tower(tmp_path / "tower.db", tmp_path).load()

    assert again.ranges.held == {(1, 0): ("w1", 1, "assigned")}
    assert again.rows()[(1, 0)] == ("assigned", 1, "w1")
    first.store.close()
    again.store.close()


# ---- any sequence of events keeps the books straight --------------------------------------------

WORKERS = ("w1", "w2", "w3")


class RangeBookMachine(RuleBasedStateMachine):
    """Random take/event/release sequences against a model of each range: (state, attempt, holder)."""

    MAX_ATTEMPTS = 2

    def __init__(self):
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="es-rangebook-"))
        self.t = Tower(self.dir / "tower.db", self.dir)
        self.t.add(es_task(max_attempts=self.MAX_ATTEMPTS))
        self.model = {key: ["ready", 1, None] for key in self.t.rows()}
        self.stale = 0

    def teardown(self):
        self.t.store.close()
        shutil.rmtree(self.dir)

    def held(self, worker=None):
        return sorted(k for k, (s, _, w) in self.model.items() if s in ("assigned", "running")
                      and (worker is None or w == worker))

    def rid(self, key, attempt=None):
        job_id, idx = key
        return f"1-{job_id}-0-{idx}-{self.model[key][1] if attempt is None else attempt}"

    @rule(worker=st.sampled_from(WORKERS), n=st.integers(0, 4))
    def take(self, worker, n):
        ready = sum(1 for s, _, _ in self.model.values() if s == "ready")
        ranges, specs = self.t.ranges.take(worker, n)
        assert len(ranges) == min(n, ready)
        assert sorted({r.job_id for r in ranges}) == [s.job_id for s in specs]
        for r in ranges:
            key = (r.job_id, int(r.range_id.split("-")[3]))
            assert self.model[key][0] == "ready"
            assert r.range_id == self.rid(key)
            self.model[key][0], self.model[key][2] = "assigned", worker

    @precondition(lambda self: self.held())
    @rule(data=st.data(), state=st.sampled_from(["running", "finished", "failed", "failed_lost", "preempted"]))
    def event(self, data, state):
        key = data.draw(st.sampled_from(self.held()))
        m = self.model[key]
        code = {"failed": 2001, "failed_lost": int(ErrorCode.LOST_WORKER),
                "preempted": int(ErrorCode.WALLTIME_PREEMPTED)}.get(state)
        self.t.ranges.apply(m[2], ev(self.rid(key), state.removesuffix("_lost"), error_code=code))
        if state == "running":
            m[0] = "running"
        elif state == "finished":
            m[0] = "finished"
        elif state == "failed" and m[1] >= self.MAX_ATTEMPTS:
            m[0] = "failed"
        elif state == "failed":
            m[0], m[1] = "ready", m[1] + 1
        else:
            m[0] = "ready"

    @precondition(lambda self: self.held())
    @rule(data=st.data(), how=st.sampled_from(["worker", "attempt"]))
    def stale_event(self, data, how):
        key = data.draw(st.sampled_from(self.held()))
        worker, attempt = self.model[key][2], self.model[key][1]
        if how == "worker":
            worker = next(w for w in WORKERS if w != worker)
        else:
            attempt += data.draw(st.sampled_from([-1, 1])) if attempt > 1 else 1
        self.t.ranges.apply(worker, ev(self.rid(key, attempt), "finished"))
        self.stale += 1

    @rule(worker=st.sampled_from(WORKERS))
    def release(self, worker):
        mine = self.held(worker)
        assert self.t.ranges.release_worker(worker, ErrorCode.LOST_WORKER, "lost") == len(mine)
        for key in mine:
            self.model[key][0] = "ready"

    @invariant()
    def books_match_the_model_and_the_store(self):
        self.t.check_counts()
        rows = self.t.rows()
        assert {k: (s, a) for k, (s, a, _) in rows.items()} == {k: (s, a) for k, (s, a, _) in self.model.items()}
        assert {k: w for k, (s, a, w) in rows.items() if s in ("assigned", "running")} == \
            {k: self.model[k][2] for k in self.held()}
        assert self.t.ranges.stale_events == self.stale
        for w in WORKERS:
            assert self.t.ranges.held_by(w) == len(self.held(w))
        all_final = {j for j in {k[0] for k in self.model}
                     if all(s in ("finished", "failed") for (jj, _), (s, _, _) in self.model.items() if jj == j)}
        assert sorted(self.t.ranges.to_merge) == sorted(all_final)
        assert {j for j, s in self.t.job_states().items() if s == "merging"} == all_final


TestRangeBookSequences = RangeBookMachine.TestCase
TestRangeBookSequences.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


@pytest.mark.parametrize("text, parsed", [
    ("1-2-0-3-4", (2, 3, 4)), ("10-200-7-30000-12", (200, 30000, 12)),
    ("1-2-0-3", None), ("1-2-0-3-4-5", None), ("1-2-0-3-x", None), ("1-2--3-4", None), ("", None),
    (" 1-2-0-3-4", None), ("1-2-0-3-4\n", None), ("1-2-0-3-+4", None), ("1-2-0-3-\u0664", None),
])
def test_range_ids_are_read_strictly(text, parsed):
    from control_tower.ranges import parse_range_id

    assert parse_range_id(text) == parsed
