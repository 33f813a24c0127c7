"""The range book across a restart (a fresh book against one read back from the store) and under
random sequences of hand-outs, events and lost workers, against a model of each range."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hpc_edge.errors import ErrorCode
from tests.unit.rangebook_tower import Tower, es_task, ev


# ---- a restarted tower ------------------------------------------------------------------------

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
