"""The tower's book of event ranges over a real SQLite store: handing ranges out, events from relays,
retries, preemption, workers that go away, jobs whose ranges are all final. Checks look at the
``ranges`` and ``jobs`` rows (what ``hpc-edge jobs`` shows). What a restarted tower reads back, and
random sequences of events: ``test_es_rangebook_restart.py``."""

from __future__ import annotations

import tarfile

import pytest

from control_tower.merge import MergeError
from control_tower.merge import merge_job, read_finished_ranges
from control_tower.workload import TaskSpec
from hpc_edge.errors import ErrorCode
from tests.unit.rangebook_tower import Tower, es_task, ev


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
    assert read_finished_ranges(tower.store.path, 1) == [(0, 1, 0, 2, "/o/1-1-0-0-1.h5")]
    assert tower.ranges.held_by("w1") == 1
    assert tower.ranges.stale_events == 0
    tower.check_counts()


def test_running_and_finished_in_one_transaction_are_stored_finished(tower):
    # a range's end is written with fewer columns than its start: the two, queued in one turn, must
    # still land in their order
    tower.add(es_task())
    tower.take("w1", 2)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "running", rank=1, host="n1"))
    tower.ranges.apply("w1", ev("1-1-0-0-1", "finished", rank=1, host="n1", output="/o/a.h5", size=1))
    tower.ranges.apply("w1", ev("1-1-0-1-1", "running", rank=0, host="n0"))
    tower.save()

    assert tower.rows() == {(1, 0): ("finished", 1, "w1"), (1, 1): ("running", 1, "w1"),
                            (2, 0): ("ready", 1, None), (2, 1): ("ready", 1, None), (3, 0): ("ready", 1, None)}
    tower.check_counts()


def test_a_range_finished_after_a_failure_keeps_nothing_of_the_failure(tower):
    tower.add(es_task(max_attempts=3))
    tower.take("w1", 1)
    tower.ranges.apply("w1", ev("1-1-0-0-1", "failed", rank=2, host="n2", exit_code=3, signal=None,
                                error_code=2001, error_diag="bad event", cpu_s=9.0, wall_s=9.5))
    tower.save()
    assert tower.take("w2", 1) == ["1-1-0-0-2"]
    tower.ranges.apply("w2", ev("1-1-0-0-2", "finished", rank=0, host="n5", output="/o/r.h5", size=7,
                                cpu_s=1.0, wall_s=1.25))
    tower.save()

    row = tower.row(1, 0)
    assert {k: row[k] for k in ("state", "attempt", "worker_id", "rank", "host", "output", "size", "cpu_s", "wall_s",
                                "exit_code", "signal", "error_code", "error_diag", "updated")} == \
        {"state": "finished", "attempt": 2, "worker_id": "w2", "rank": 0, "host": "n5", "output": "/o/r.h5",
         "size": 7, "cpu_s": 1.0, "wall_s": 1.25, "exit_code": None, "signal": None, "error_code": None,
         "error_diag": None, "updated": 1000.0}
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

def test_a_merge_reads_the_committed_ranges_on_a_connection_of_its_own(tower, tmp_path):
    """The tower starts a job's merge after its commit; the merge thread reads the ranges itself."""
    tower.add(es_task(max_attempts=1))
    tower.take("w1", 5)
    outs = {}
    for rid in ("1-1-0-1-1", "1-1-0-0-1"):  # reported out of event order
        outs[rid] = tmp_path / f"{rid}.out"
        outs[rid].write_bytes(rid.encode())
        tower.ranges.apply("w1", ev(rid, "finished", output=str(outs[rid]), size=len(rid)))
    tower.ranges.flush()

    assert read_finished_ranges(tower.store.path, 1) == []  # written, not committed: not seen
    tower.store.commit()
    assert read_finished_ranges(tower.store.path, 1) == [(0, 1, 0, 2, str(outs["1-1-0-0-1"])),
                                                              (1, 1, 3, 3, str(outs["1-1-0-1-1"]))]

    out = merge_job(tower.store.path, 1, "1-1-0-", tmp_path / "merged", "toysim.1")
    with tarfile.open(out) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == \
            [("1-1-0-0-1.out", b"1-1-0-0-1"), ("1-1-0-1-1.out", b"1-1-0-1-1")]
    assert merge_job(tower.store.path, 2, "1-2-0-", tmp_path / "merged", "toysim.2") is None  # none finished
    with pytest.raises(MergeError, match="cannot read job 1's ranges from"):  # fails the job, not the tower
        merge_job(tmp_path / "no-such-store.db", 1, "1-1-0-", tmp_path / "merged", "toysim.1")


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

@pytest.mark.parametrize("text, parsed", [
    ("1-2-0-3-4", (2, 3, 4)), ("10-200-7-30000-12", (200, 30000, 12)),
    ("1-2-0-3", None), ("1-2-0-3-4-5", None), ("1-2-0-3-x", None), ("1-2--3-4", None), ("", None),
    (" 1-2-0-3-4", None), ("1-2-0-3-4\n", None), ("1-2-0-3-+4", None), ("1-2-0-3-\u0664", None),
])
def test_range_ids_are_read_strictly(text, parsed):
    from control_tower.ranges import parse_range_id

    assert parse_range_id(text) == parsed
