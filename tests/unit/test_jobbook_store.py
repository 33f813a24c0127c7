"""The tower's job book over a real SQLite store: dispatch, events from relays, retries, kills,
and what survives a restart. Every check looks at the store the way a user would (``hpc-edge jobs``
reads these rows)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_tower.dispatcher import Dispatcher
from control_tower.jobs import JobBook
from control_tower.store import Store, StoreError
from control_tower.workload import TaskSpec
from hpc_edge import protocol as p
from hpc_edge.errors import ErrorCode

COMMAND = "run --i {index} --job {job_id} --try {attempt}"


def sim_task(**kw) -> TaskSpec:
    return TaskSpec(**({"name": "sim", "command": COMMAND, "count": 3, "max_attempts": 2, "walltime": 600} | kw))


def event(job_id: int, dispatch: int, state: str, t: float = 1000.0, **kw) -> p.JobEvent:
    return p.JobEvent(job_id=job_id, dispatch=dispatch, state=state, t=t, **kw)


def sql_counts(store: Store) -> dict[str, int]:
    return dict(store.db.execute("SELECT state, count(*) FROM jobs GROUP BY state"))


def state_of(store: Store, job_id: int) -> tuple[str, int, int]:
    row = store.job(job_id)
    return row["state"], row["attempt"], row["dispatch"]


def attempts_of(store: Store, job_id: int) -> list[tuple]:
    return [(a["dispatch"], a["attempt"], a["state"], a["worker_id"], a["error_code"])
            for a in store.attempts(job_id)]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "tower.db").open()
    yield s
    s.close()


class Tower:
    """The store and a job book over it, as the tower holds them."""

    def __init__(self, store: Store, jobs_dir: Path):
        self.store = store
        self.dispatcher = Dispatcher(walltime_margin_s=60)
        self.book = JobBook(store, self.dispatcher, jobs_dir)

    def add(self, spec: TaskSpec, workload: str = "wl") -> int:
        task_id = self.store.add_task(spec, workload)
        self.book.add_task(task_id, spec.name, spec)
        return task_id

    def dispatch(self, worker_id: str = "w1", cores: int = 1, max_job_cores: int = 8, memory_mb: int = 0,
                 remaining_s: float | None = None) -> list[p.JobSpec]:
        return self.book.dispatch(worker_id, cores, max_job_cores, memory_mb, remaining_s)

    def check_counts(self) -> None:
        assert dict(self.book.totals()) == sql_counts(self.store)
        assert len(self.dispatcher) == sql_counts(self.store).get("activated", 0)


@pytest.fixture
def tower(store, tmp_path):
    return Tower(store, tmp_path / "jobs")


# ---- adding tasks -----------------------------------------------------------------------------

def test_added_task_jobs_are_activated_and_ready(tower, store):
    task_id = store.add_task(sim_task(), "wl")
    tower.book.load()

    assert sql_counts(store) == {"activated": 3}
    assert [(j["idx"], j["state"], j["attempt"], j["dispatch"]) for j in store.jobs(task_id=task_id)] == \
        [(0, "activated", 1, 0), (1, "activated", 1, 0), (2, "activated", 1, 0)]
    assert dict(tower.book.totals()) == {"activated": 3}
    assert len(tower.dispatcher) == 3
    assert not tower.book.all_final()


def test_a_task_over_inputs_stores_each_jobs_inputs(tower, store):
    tower.add(sim_task(count=None, inputs=["a", "b", "c d", "e", "f"], files_per_job=2))

    assert [store.job(j)["inputs"] for j in (1, 2, 3)] == [["a", "b"], ["c d", "e"], ["f"]]
    specs = tower.dispatch(cores=3)
    assert [s.command for s in specs] == [f"run --i {i} --job {i + 1} --try 1" for i in range(3)]


def test_a_stored_task_reads_back_as_written(tower, store):
    spec = sim_task(cores=2, memory_mb=700, env={"A": "1"}, outputs=["out.txt"], priority=4)
    task_id = store.add_task(spec, "wl")

    assert store.tasks() == [(task_id, "sim", "wl", spec)]
    assert store.task_exists("wl", "sim")
    assert not store.task_exists("other", "sim")


# ---- dispatch ---------------------------------------------------------------------------------

def test_dispatch_sends_jobs_with_their_command_and_workdir(tower, store, tmp_path):
    task_id = tower.add(sim_task(cores=1, memory_mb=100, env={"MODE": "x"}, outputs=["o.txt"]))
    specs = tower.dispatch("w1", cores=2, memory_mb=100)

    assert [(s.job_id, s.task_id, s.attempt, s.dispatch) for s in specs] == [(1, task_id, 1, 1), (2, task_id, 1, 1)]
    assert [s.command for s in specs] == ["run --i 0 --job 1 --try 1", "run --i 1 --job 2 --try 1"]
    assert [s.workdir for s in specs] == [str(tmp_path / "jobs" / "sim" / "1" / "try1"),
                                          str(tmp_path / "jobs" / "sim" / "2" / "try1")]
    assert (specs[0].cores, specs[0].memory_mb, specs[0].walltime_s) == (1, 100, 600.0)
    assert (specs[0].env, specs[0].outputs) == ({"MODE": "x"}, ("o.txt",))
    for s in specs:
        row = store.job(s.job_id)
        assert (row["state"], row["dispatch"], row["worker_id"], row["workdir"]) == ("sent", 1, "w1", s.workdir)
    assert store.job(3)["state"] == "activated"
    assert tower.book.held_by("w1") == {1, 2}
    assert sql_counts(store) == {"sent": 2, "activated": 1}
    tower.check_counts()


def test_dispatch_gives_nothing_when_nothing_fits(tower, store):
    tower.add(sim_task(cores=2, memory_mb=100, walltime=600))

    assert tower.dispatch(cores=8, max_job_cores=1) == []
    assert tower.dispatch(cores=8, memory_mb=99) == []
    assert tower.dispatch(cores=8, remaining_s=659) == []
    assert sql_counts(store) == {"activated": 3}
    tower.check_counts()


# ---- events: the happy path -------------------------------------------------------------------

def test_running_then_finished(tower, store):
    tower.add(sim_task())
    (spec,) = tower.dispatch("w1")

    tower.book.apply("w1", event(spec.job_id, 1, "running", t=1000.0, rank=1, host="node7", pid=4242,
                                 start_time=999.5))
    row = store.job(spec.job_id)
    assert (row["state"], row["rank"], row["host"], row["pid"], row["start_time"]) == \
        ("running", 1, "node7", 4242, 999.5)
    assert sql_counts(store) == {"running": 1, "activated": 2}
    tower.check_counts()

    tower.book.apply("w1", event(spec.job_id, 1, "finished", t=1010.0, rank=1, host="node7", exit_code=0,
                                 end_time=1009.5, wall_s=10.0, cpu_s=9.0, max_rss_kb=2048,
                                 files=[p.FileInfo(name="out.txt", size=12)]))
    row = store.job(spec.job_id)
    assert (row["state"], row["exit_code"], row["wall_s"], row["attempt"]) == ("finished", 0, 10.0, 1)
    assert row["files"] == [{"name": "out.txt", "size": 12}]
    assert attempts_of(store, spec.job_id) == [(1, 1, "finished", "w1", None)]
    assert tower.book.held_by("w1") == set()
    assert sql_counts(store) == {"finished": 1, "activated": 2}
    tower.check_counts()


def test_a_repeated_running_event_changes_nothing(tower, store):
    tower.add(sim_task())
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w1", event(spec.job_id, 1, "running", t=1000.0))
    tower.book.apply("w1", event(spec.job_id, 1, "running", t=1001.0))

    assert sql_counts(store) == {"running": 1, "activated": 2}
    tower.check_counts()


def test_finished_without_a_running_event(tower, store):
    tower.add(sim_task())
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w1", event(spec.job_id, 1, "finished", exit_code=0))

    assert state_of(store, spec.job_id) == ("finished", 1, 1)
    tower.check_counts()


def test_all_final_once_every_job_has_ended(tower, store):
    tower.add(sim_task(max_attempts=1))
    specs = tower.dispatch("w1", cores=3)
    for spec, state in zip(specs, ["finished", "failed", "cancelled"]):
        tower.book.apply("w1", event(spec.job_id, 1, state, error_code=1001 if state == "failed" else None))

    assert sql_counts(store) == {"finished": 1, "failed": 1, "cancelled": 1}
    assert tower.book.all_final()
    tower.check_counts()


# ---- events: failures, retries, preemption ----------------------------------------------------

@pytest.mark.parametrize("code", [int(ErrorCode.NONZERO_EXIT), int(ErrorCode.OUTPUT_MISSING), 2042, None],
                         ids=["nonzero-exit", "output-missing", "plugin-code", "no-code"])
def test_a_payload_failure_with_attempts_left_is_retried(tower, store, tmp_path, code):
    tower.add(sim_task(max_attempts=2))
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w1", event(spec.job_id, 1, "running"))
    tower.book.apply("w1", event(spec.job_id, 1, "failed", exit_code=3, error_code=code, error_diag="exit code 3"))

    assert state_of(store, spec.job_id) == ("activated", 2, 1)
    assert attempts_of(store, spec.job_id) == [(1, 1, "closed", "w1", code)]
    assert sql_counts(store) == {"activated": 3}
    tower.check_counts()

    (again,) = tower.dispatch("w2")  # a retried job goes before the jobs that never ran
    assert (again.job_id, again.attempt, again.dispatch) == (spec.job_id, 2, 2)
    assert again.command == f"run --i 0 --job {spec.job_id} --try 2"
    assert again.workdir == str(tmp_path / "jobs" / "sim" / str(spec.job_id) / "try2")
    assert store.job(spec.job_id)["error_code"] is None  # the new dispatch starts clean


def test_a_payload_failure_without_attempts_left_fails_the_job(tower, store):
    tower.add(sim_task(max_attempts=2))
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w1", event(spec.job_id, 1, "failed", exit_code=3, error_code=1001))
    (again,) = tower.dispatch("w1")
    tower.book.apply("w1", event(again.job_id, 2, "failed", exit_code=4, error_code=1001, error_diag="exit code 4"))

    row = store.job(spec.job_id)
    assert (row["state"], row["attempt"], row["exit_code"], row["error_diag"]) == ("failed", 2, 4, "exit code 4")
    assert attempts_of(store, spec.job_id) == [(1, 1, "closed", "w1", 1001), (2, 2, "failed", "w1", 1001)]
    assert sql_counts(store) == {"failed": 1, "activated": 2}
    assert spec.job_id not in [j for _, j in tower.dispatcher.take(100, 8, 0)]


def test_one_attempt_means_no_retry(tower, store):
    tower.add(sim_task(max_attempts=1))
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w1", event(spec.job_id, 1, "failed", error_code=1001))

    assert state_of(store, spec.job_id) == ("failed", 1, 1)
    tower.check_counts()


@pytest.mark.parametrize("state, code", [("preempted", ErrorCode.WALLTIME_PREEMPTED),
                                         ("failed", ErrorCode.WALLTIME_PREEMPTED),
                                         ("failed", ErrorCode.WORKER_STOPPED),
                                         ("failed", ErrorCode.LOST_WORKER)])
def test_preemption_requeues_without_burning_an_attempt(tower, store, state, code):
    tower.add(sim_task(max_attempts=1))
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w1", event(spec.job_id, 1, "running"))
    tower.book.apply("w1", event(spec.job_id, 1, state, signal=15, error_code=int(code), error_diag="walltime"))

    assert state_of(store, spec.job_id) == ("activated", 1, 1)
    assert attempts_of(store, spec.job_id) == [(1, 1, "closed", "w1", int(code))]
    tower.check_counts()

    (again,) = tower.dispatch("w2")
    assert (again.job_id, again.attempt, again.dispatch) == (spec.job_id, 1, 2)


# ---- stale events -----------------------------------------------------------------------------

def test_an_event_with_a_stale_dispatch_number_is_ignored(tower, store):
    tower.add(sim_task())
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w1", event(spec.job_id, 2, "finished", exit_code=0))

    assert state_of(store, spec.job_id) == ("sent", 1, 1)
    assert tower.book.stale_events == 1
    assert attempts_of(store, spec.job_id) == []
    tower.check_counts()


def test_a_late_event_of_an_earlier_dispatch_is_ignored(tower, store):
    tower.add(sim_task())
    (spec,) = tower.dispatch("w1")
    tower.book.release_worker("w1", ErrorCode.LOST_WORKER, "no heartbeat")
    (again,) = tower.dispatch("w2")
    tower.book.apply("w1", event(spec.job_id, 1, "finished", exit_code=0))  # the lost worker speaks again

    assert state_of(store, spec.job_id) == ("sent", 1, 2)
    assert store.job(spec.job_id)["worker_id"] == "w2"
    assert tower.book.stale_events == 1
    tower.book.apply("w2", event(spec.job_id, 2, "finished", exit_code=0))
    assert state_of(store, spec.job_id) == ("finished", 1, 2)
    tower.check_counts()


def test_an_event_from_another_worker_is_ignored(tower, store):
    tower.add(sim_task())
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w2", event(spec.job_id, 1, "running"))
    tower.book.apply("w2", event(spec.job_id, 1, "failed", error_code=1001))

    assert state_of(store, spec.job_id) == ("sent", 1, 1)
    assert tower.book.stale_events == 2
    tower.check_counts()


def test_an_event_for_a_job_that_is_not_out_is_ignored(tower, store):
    tower.add(sim_task())
    tower.book.apply("w1", event(2, 1, "finished"))
    tower.book.apply("w1", event(999, 1, "finished"))

    assert sql_counts(store) == {"activated": 3}
    assert tower.book.stale_events == 2
    tower.check_counts()


# ---- workers that go away ---------------------------------------------------------------------

def test_release_worker_returns_its_jobs_without_burning_an_attempt(tower, store):
    tower.add(sim_task(count=4, max_attempts=1))
    a, b = tower.dispatch("w1", cores=2)
    (c,) = tower.dispatch("w2", cores=1)
    tower.book.apply("w1", event(a.job_id, 1, "running"))

    assert tower.book.release_worker("w1", ErrorCode.LOST_WORKER, "no heartbeat for 120 s") == 2
    for job_id in (a.job_id, b.job_id):
        assert state_of(store, job_id) == ("activated", 1, 1)
        assert attempts_of(store, job_id) == [(1, 1, "closed", "w1", int(ErrorCode.LOST_WORKER))]
        assert store.attempts(job_id)[0]["error_diag"] == "no heartbeat for 120 s"
    assert state_of(store, c.job_id) == ("sent", 1, 1)
    assert tower.book.held_by("w1") == set()
    assert tower.book.held_by("w2") == {c.job_id}
    assert sql_counts(store) == {"activated": 3, "sent": 1}
    tower.check_counts()
    assert tower.book.release_worker("w1", ErrorCode.LOST_WORKER, "again") == 0


def test_reconcile_names_jobs_the_relay_must_drop(tower):
    tower.add(sim_task(count=4))
    a, b = tower.dispatch("w1", cores=2)
    (c,) = tower.dispatch("w2", cores=1)

    assert tower.book.reconcile("w1", {a.job_id, b.job_id}) == []
    assert tower.book.reconcile("w1", {a.job_id, c.job_id, 4, 999}) == [c.job_id, 4, 999]


# ---- kill -------------------------------------------------------------------------------------

def test_kill_of_an_activated_job_cancels_it(tower, store):
    tower.add(sim_task())

    result = tower.book.kill([2], "not needed")

    assert result == {"cancelled": 1, "signalled": 0, "unknown": 0, "by_worker": {}}
    row = store.job(2)
    assert (row["state"], row["error_code"], row["error_diag"]) == ("cancelled", int(ErrorCode.KILLED_BY_USER),
                                                                    "not needed")
    assert [s.job_id for s in tower.dispatch(cores=10)] == [1, 3]
    assert sql_counts(store) == {"cancelled": 1, "sent": 2}
    tower.check_counts()


def test_kill_of_a_job_out_on_a_worker_signals_that_worker(tower, store):
    tower.add(sim_task())
    a, b = tower.dispatch("w1", cores=2)

    result = tower.book.kill([a.job_id, 3, 77], "stop it")

    assert result == {"cancelled": 1, "signalled": 1, "unknown": 1, "by_worker": {"w1": [a.job_id]}}
    assert state_of(store, a.job_id) == ("sent", 1, 1)  # cancelled when the relay reports it
    tower.book.apply("w1", event(a.job_id, 1, "cancelled", error_code=int(ErrorCode.KILLED_BY_USER)))
    assert state_of(store, a.job_id) == ("cancelled", 1, 1)
    tower.check_counts()


def test_kill_of_a_finished_job_changes_nothing(tower, store):
    tower.add(sim_task())
    (spec,) = tower.dispatch("w1")
    tower.book.apply("w1", event(spec.job_id, 1, "finished", exit_code=0))

    assert tower.book.kill([spec.job_id, spec.job_id], "late") == \
        {"cancelled": 0, "signalled": 0, "unknown": 0, "by_worker": {}}
    assert state_of(store, spec.job_id) == ("finished", 1, 1)
    tower.check_counts()


# ---- restart ----------------------------------------------------------------------------------

def test_the_store_survives_closing_and_reopening(tmp_path):
    path = tmp_path / "tower.db"
    before = Tower(Store(path).open(), tmp_path / "jobs")
    before.add(sim_task(count=5, max_attempts=2))
    before.add(sim_task(name="big", count=2, cores=4, priority=-1))
    j1, j2, j3 = before.dispatch("w1", cores=3)
    before.book.apply("w1", event(j1.job_id, 1, "running"))
    before.book.apply("w1", event(j2.job_id, 1, "failed", error_code=1001))
    before.book.apply("w1", event(j3.job_id, 1, "finished", exit_code=0))
    before.book.kill([5], "not needed")
    rows_before = before.store.jobs()
    totals_before = before.book.totals()
    before.store.close()

    after = Tower(Store(path).open(), tmp_path / "jobs")
    after.book.load()

    assert after.store.jobs() == rows_before
    assert after.book.totals() == totals_before
    assert sql_counts(after.store) == {"running": 1, "activated": 4, "finished": 1, "cancelled": 1}
    after.check_counts()
    assert after.book.held_by("w1") == {j1.job_id}
    # the relay's report of a job sent before the restart is honoured
    after.book.apply("w1", event(j1.job_id, 1, "finished", exit_code=0))
    assert state_of(after.store, j1.job_id) == ("finished", 1, 1)
    # the ready queue is the same: the retried job, the untouched one, then the low-priority task
    specs = after.dispatch("w2", cores=100)
    assert [(s.job_id, s.attempt, s.dispatch) for s in specs] == [(j2.job_id, 2, 2), (4, 1, 1), (6, 1, 1),
                                                                  (7, 1, 1)]
    after.check_counts()
    after.store.close()


def test_opening_a_file_that_is_not_a_store_names_it(tmp_path):
    path = tmp_path / "tower.db"
    path.write_bytes(b"this is not an sqlite database" * 100)

    with pytest.raises(StoreError, match=str(path)):
        Store(path).open()


# ---- counts stay right, whatever happens ------------------------------------------------------

operations = st.lists(st.one_of(
    st.tuples(st.just("dispatch"), st.sampled_from(["w1", "w2"]), st.integers(1, 4)),
    st.tuples(st.just("event"), st.integers(0, 20),
              st.sampled_from(["running", "finished", "failed", "preempted", "cancelled"]),
              st.sampled_from([None, 1001, 2042, 1020, 1031, 1040])),
    st.tuples(st.just("stale"), st.integers(0, 20), st.sampled_from(["finished", "failed"])),
    st.tuples(st.just("release"), st.sampled_from(["w1", "w2"])),
    st.tuples(st.just("kill"), st.integers(1, 8)),
    st.tuples(st.just("restart")),
), max_size=30)


def check_invariants(t: Tower) -> None:
    t.check_counts()
    out = {j: (s, w) for j, _, s, w in t.store.job_states() if s in ("sent", "running")}
    # inflight: job -> (task_id, worker_id, dispatch, attempt, state)
    assert {j: (state, worker) for j, (_, worker, _, _, state) in t.book.inflight.items()} == out
    for row in t.store.jobs(limit=100):
        ended = len(t.store.attempts(row["job_id"]))
        assert row["dispatch"] == ended + (1 if row["job_id"] in out else 0)
        assert 1 <= row["attempt"] <= {1: 2, 2: 1}[row["task_id"]]


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(operations)
def test_counts_agree_with_the_store_after_any_sequence(ops):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tower.db"
        t = Tower(Store(path, synchronous="OFF").open(), Path(tmp) / "jobs")
        t.add(sim_task(count=5, max_attempts=2))
        t.add(sim_task(name="pair", count=3, cores=2, max_attempts=1, priority=1))
        clock = 1000.0
        for op in ops:
            clock += 1
            if op[0] == "dispatch":
                t.dispatch(op[1], cores=op[2])
            elif op[0] == "event" and t.book.inflight:
                job_id = sorted(t.book.inflight)[op[1] % len(t.book.inflight)]
                _, worker, dispatch, _, _ = t.book.inflight[job_id]
                t.book.apply(worker, event(job_id, dispatch, op[2], t=clock, error_code=op[3]))
            elif op[0] == "stale" and t.book.inflight:
                job_id = sorted(t.book.inflight)[op[1] % len(t.book.inflight)]
                inf = t.book.inflight[job_id]
                _, worker, dispatch, _, _ = inf
                t.book.apply(worker, event(job_id, dispatch + 1, op[2], t=clock))
                assert t.book.inflight[job_id] is inf
            elif op[0] == "release":
                t.book.release_worker(op[1], ErrorCode.LOST_WORKER, "lost")
            elif op[0] == "kill":
                t.book.kill([op[1]], "test")
            elif op[0] == "restart":
                t.store.close()
                t = Tower(Store(path, synchronous="OFF").open(), Path(tmp) / "jobs")
                t.book.load()
            check_invariants(t)
        t.store.close()


# ---- a relay's whole update at once -----------------------------------------------------------

def store_rows(store: Store) -> tuple[list, list, list]:
    """Every row a user can read, without the clock times of what each tower did at its own moment
    (adding the task, dispatching): a job's 'updated' while it is out, and the times of those events."""
    names = [r[1] for r in store.db.execute("PRAGMA table_info(jobs)")]
    cols = ", ".join("CASE WHEN state IN ('sent', 'activated') THEN NULL ELSE updated END" if n == "updated"
                     else n for n in names)
    jobs = store.db.execute(f"SELECT {cols} FROM jobs ORDER BY job_id").fetchall()
    attempts = store.db.execute("SELECT * FROM attempts ORDER BY job_id, dispatch").fetchall()
    events = store.db.execute("SELECT CASE WHEN kind='job' AND detail!='sent' THEN t END, kind, job_id, worker_id, "
                              "detail FROM events ORDER BY job_id, 1, detail").fetchall()
    return jobs, attempts, events


update_events = st.lists(st.tuples(
    st.integers(0, 20), st.sampled_from(["running", "finished", "finished", "failed", "preempted"]),
    st.booleans(), st.sampled_from([None, 1001, 1020])), max_size=12)


@settings(max_examples=80, deadline=None, database=None, derandomize=True)
@given(update_events)
def test_an_update_applied_at_once_writes_what_event_by_event_writes(evs):
    """apply_all (the tower's path for a relay's update) leaves the store and the book exactly as
    applying its events one by one: finished jobs, failures, retries, stale and repeated events."""
    with tempfile.TemporaryDirectory() as tmp:
        towers = []
        for name in ("each", "all"):
            t = Tower(Store(Path(tmp) / f"{name}.db", synchronous="OFF").open(), Path(tmp) / "jobs")
            t.add(sim_task(count=6, max_attempts=2))
            t.dispatch("w1", cores=4)
            t.dispatch("w2", cores=2)
            towers.append(t)
        out = sorted(towers[0].book.inflight)
        update = []
        for i, (pick, state, stale, code) in enumerate(evs):
            job_id = out[pick % len(out)]
            _, _, dispatch, _, _ = towers[0].book.inflight[job_id]
            update.append(event(job_id, dispatch + (1 if stale else 0), state, t=2000.0 + i, error_code=code,
                                exit_code=0 if state == "finished" else None, wall_s=1.5, rank=0, host="n1",
                                files=[p.FileInfo(name="out.txt", size=i)] if state == "finished" else []))
        for e in update:
            towers[0].book.apply("w1", e)
        towers[1].book.apply_all("w1", update)
        assert store_rows(towers[0].store) == store_rows(towers[1].store)
        assert towers[0].book.inflight == towers[1].book.inflight
        assert dict(towers[0].book.totals()) == dict(towers[1].book.totals())
        for t in towers:
            t.check_counts()
            t.store.close()
