"""Event-service tasks in a workload: what is accepted, how many jobs they make, and which events each
range of each job covers (the geometry the tower stores and hands out)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from control_tower.workload import TaskSpec, WorkloadError, expand, parse_workload, render_command


def es_task(**kw) -> TaskSpec:
    return TaskSpec(**({"name": "toysim", "command": "sim {inputs}", "event_service": True} | kw))


def events_of(ranges) -> list[int]:
    return [e for *_, first, last in ranges for e in range(first, last + 1)]


# ---- validation -------------------------------------------------------------------------------

def test_an_event_service_task_by_events_is_accepted():
    t = es_task(events=2000, events_per_range=10, events_per_job=1000)
    assert (t.n_jobs, t.events, t.events_per_range, t.events_per_job) == (2, 2000, 10, 1000)


@pytest.mark.parametrize("kw, message", [
    ({}, "exactly one of 'events' or 'files'"),
    ({"events": 10, "files": [{"name": "a.root", "events": 5}]}, "exactly one of 'events' or 'files'"),
    ({"events": 10, "count": 2}, "not 'count' or 'inputs'"),
    ({"events": 10, "inputs": ["a.root"]}, "not 'count' or 'inputs'"),
])
def test_an_event_service_task_must_be_sized_by_events_or_files_alone(kw, message):
    with pytest.raises(ValidationError, match=message):
        es_task(**kw)


@pytest.mark.parametrize("key, value", [
    ("events", 10), ("events_per_job", 5), ("files", [{"name": "a.root", "events": 5}]),
])
def test_event_service_keys_need_event_service(key, value):
    with pytest.raises(ValidationError, match=f"'{key}' needs event_service: true"):
        TaskSpec(name="plain", command="run", count=2, **{key: value})


def test_events_alone_do_not_make_an_event_service_task():
    with pytest.raises(ValidationError):
        TaskSpec(name="plain", command="run", events=10)


@pytest.mark.parametrize("kw", [
    {"events": 0}, {"events": 10, "events_per_range": 0}, {"events": 10, "events_per_job": 0},
    {"files": []}, {"files": [{"name": "a.root", "events": 0}]}, {"files": [{"name": "", "events": 3}]},
    {"files": [{"name": "a.root", "events": 3, "nevents": 3}]},
])
def test_nonsense_event_counts_are_rejected(kw):
    with pytest.raises(ValidationError):
        es_task(**kw)


def test_a_workload_file_error_names_the_file_line_and_task():
    text = ("name: es\n"
            "tasks:\n"
            "  - name: toysim\n"
            "    command: sim\n"
            "    event_service: true\n"
            "    events: 100\n"
            "    count: 4\n")
    with pytest.raises(WorkloadError) as info:
        parse_workload(text, "es.yaml")
    assert str(info.value).startswith("es.yaml:3: tasks.0: ")
    assert "not 'count' or 'inputs'" in str(info.value)


# ---- jobs and ranges --------------------------------------------------------------------------

def test_events_per_job_splits_the_events_into_jobs_the_last_short():
    t = es_task(events=1005, events_per_job=500, events_per_range=100)

    assert t.n_jobs == 3
    assert [len(events_of(t.job_ranges(i))) for i in range(3)] == [500, 500, 5]
    assert [(first, last) for *_, first, last in t.job_ranges(2)] == [(1000, 1004)]
    assert [j.index for j in expand(t)] == [0, 1, 2]
    assert [j.inputs for j in expand(t)] == [None, None, None]


def test_without_events_per_job_all_events_are_one_job():
    t = es_task(events=1005, events_per_range=100)
    assert t.n_jobs == 1
    assert events_of(t.job_ranges(0)) == list(range(1005))


def test_a_jobs_ranges_cover_its_events_once_in_order_the_last_range_short():
    t = es_task(events=1005, events_per_job=500, events_per_range=30)

    ranges = list(t.job_ranges(1))
    assert [(first, last) for *_, first, last in ranges][:3] == [(500, 529), (530, 559), (560, 589)]
    assert (ranges[-1][-2], ranges[-1][-1]) == (980, 999)
    assert len(ranges) == 17
    assert events_of(ranges) == list(range(500, 1000))
    assert {r[:4] for r in ranges} == {(0, "", "", "")}


def test_a_range_larger_than_its_job_is_cut_at_the_job():
    t = es_task(events=25, events_per_job=10, events_per_range=64)
    assert [[(f, la) for *_, f, la in t.job_ranges(i)] for i in range(t.n_jobs)] == \
        [[(0, 9)], [(10, 19)], [(20, 24)]]


def test_files_with_their_own_event_counts_make_one_job_per_file():
    t = es_task(files=[{"name": "evgen.1.root", "events": 250, "guid": "G-1", "scope": "mc23"},
                       {"name": "evgen 2.root", "events": 7}],
                events_per_range=100)

    assert t.n_jobs == 2
    assert list(t.job_ranges(0)) == [(0, "evgen.1.root", "G-1", "mc23", 0, 99),
                                     (0, "evgen.1.root", "G-1", "mc23", 100, 199),
                                     (0, "evgen.1.root", "G-1", "mc23", 200, 249)]
    assert list(t.job_ranges(1)) == [(1, "evgen 2.root", "", "", 0, 6)]
    assert [j.inputs for j in expand(t)] == [["evgen.1.root"], ["evgen 2.root"]]
    assert render_command(t.command, index=1, inputs=t.job_inputs(1), job_id=8, attempt=1,
                          task=t.name) == "sim 'evgen 2.root'"


@given(events=st.integers(1, 3000), per_job=st.none() | st.integers(1, 3500), per_range=st.integers(1, 700))
def test_all_ranges_of_all_jobs_are_exactly_the_tasks_events(events, per_job, per_range):
    t = es_task(events=events, events_per_job=per_job, events_per_range=per_range)

    covered: list[int] = []
    for i in range(t.n_jobs):
        ranges = list(t.job_ranges(i))
        assert ranges, f"job {i} has no range"
        job_events = events_of(ranges)
        assert len(job_events) <= (per_job or events)
        assert all(1 <= last - first + 1 <= per_range for *_, first, last in ranges)
        assert all(last - first + 1 == per_range for *_, first, last in ranges[:-1])
        covered += job_events
    assert covered == list(range(events))
