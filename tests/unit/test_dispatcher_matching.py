"""Matching ready jobs to a worker's free cores: what a request gets, and in what order."""

from __future__ import annotations

import pytest

from control_tower.dispatcher import Dispatcher


def dispatcher_with(*tasks, margin: float = 60.0) -> Dispatcher:
    """tasks: (task_id, priority, cores, memory_mb, walltime_s, job_ids)."""
    d = Dispatcher(walltime_margin_s=margin)
    for task_id, priority, cores, memory_mb, walltime_s, job_ids in tasks:
        d.add_task(task_id, priority, cores, memory_mb, walltime_s)
        d.extend(task_id, job_ids)
    return d


def jobs(taken) -> list[int]:
    return [job_id for _, job_id in taken]


# ---- cores budget -----------------------------------------------------------------------------

def test_take_gives_as_many_one_core_jobs_as_cores_asked():
    d = dispatcher_with((1, 0, 1, 0, 600, range(1, 11)))

    assert d.take(cores=3, max_job_cores=8, max_job_memory_mb=0) == [(1, 1), (1, 2), (1, 3)]
    assert len(d) == 7


def test_take_covers_the_budget_with_multi_core_jobs():
    d = dispatcher_with((1, 0, 2, 0, 600, range(1, 11)))

    assert jobs(d.take(cores=4, max_job_cores=8, max_job_memory_mb=0)) == [1, 2]
    # 5 cores are covered by three 2-core jobs; a fourth would be more than was asked for
    assert jobs(d.take(cores=5, max_job_cores=8, max_job_memory_mb=0)) == [3, 4, 5]
    assert len(d) == 5


def test_take_stops_once_covered_across_tasks():
    d = dispatcher_with((1, 10, 3, 0, 600, [1, 2]), (2, 0, 1, 0, 600, [3, 4, 5]))

    # 3 + 3 cores cover a request of 4; task 2 is not touched
    assert d.take(cores=4, max_job_cores=8, max_job_memory_mb=0) == [(1, 1), (1, 2)]
    assert d.take(cores=2, max_job_cores=8, max_job_memory_mb=0) == [(2, 3), (2, 4)]


def test_take_with_nothing_ready_is_empty():
    d = dispatcher_with((1, 0, 1, 0, 600, []))

    assert d.take(cores=8, max_job_cores=8, max_job_memory_mb=0) == []
    assert len(d) == 0


def test_take_never_gives_more_jobs_than_are_ready():
    d = dispatcher_with((1, 0, 1, 0, 600, [1, 2]))

    assert jobs(d.take(cores=100, max_job_cores=8, max_job_memory_mb=0)) == [1, 2]
    assert d.take(cores=100, max_job_cores=8, max_job_memory_mb=0) == []
    assert len(d) == 0


# ---- size limits ------------------------------------------------------------------------------

def test_jobs_wider_than_the_largest_rank_are_skipped():
    d = dispatcher_with((1, 10, 4, 0, 600, [1, 2]), (2, 0, 2, 0, 600, [3, 4]))

    assert d.take(cores=8, max_job_cores=2, max_job_memory_mb=0) == [(2, 3), (2, 4)]
    assert len(d) == 2
    assert d.take(cores=8, max_job_cores=4, max_job_memory_mb=0) == [(1, 1), (1, 2)]


def test_jobs_needing_exactly_the_rank_size_fit():
    d = dispatcher_with((1, 0, 4, 2000, 600, [1]))

    assert d.take(cores=4, max_job_cores=4, max_job_memory_mb=2000) == [(1, 1)]


def test_jobs_needing_more_memory_than_a_rank_has_are_skipped():
    d = dispatcher_with((1, 10, 1, 4000, 600, [1]), (2, 0, 1, 1000, 600, [2]), (3, 0, 1, 0, 600, [3]))

    assert d.take(cores=8, max_job_cores=8, max_job_memory_mb=1000) == [(2, 2), (3, 3)]
    assert d.take(cores=8, max_job_cores=8, max_job_memory_mb=3999) == []
    assert d.take(cores=8, max_job_cores=8, max_job_memory_mb=4000) == [(1, 1)]


# ---- walltime ---------------------------------------------------------------------------------

@pytest.mark.parametrize("remaining_s, fits", [(None, True), (10_000, True), (660, True), (659.9, False),
                                                (600, False), (0, False)])
def test_walltime_plus_margin_must_fit_in_the_remaining_time(remaining_s, fits):
    d = dispatcher_with((1, 0, 1, 0, 600, [1]), margin=60)

    assert d.take(cores=1, max_job_cores=1, max_job_memory_mb=0, remaining_s=remaining_s) == \
        ([(1, 1)] if fits else [])
    assert len(d) == (0 if fits else 1)


def test_short_jobs_are_given_when_long_ones_no_longer_fit():
    d = dispatcher_with((1, 10, 1, 0, 3600, [1, 2]), (2, 0, 1, 0, 300, [3, 4]), margin=60)

    assert d.take(cores=4, max_job_cores=1, max_job_memory_mb=0, remaining_s=1000) == [(2, 3), (2, 4)]


def test_zero_margin():
    d = dispatcher_with((1, 0, 1, 0, 600, [1]), margin=0)

    assert d.take(cores=1, max_job_cores=1, max_job_memory_mb=0, remaining_s=600) == [(1, 1)]


# ---- order ------------------------------------------------------------------------------------

def test_higher_priority_tasks_go_first():
    d = dispatcher_with((1, 0, 1, 0, 600, [10, 11]), (2, 10, 1, 0, 600, [20, 21]), (3, 5, 1, 0, 600, [30, 31]),
                        (4, -3, 1, 0, 600, [40]))

    assert jobs(d.take(cores=7, max_job_cores=1, max_job_memory_mb=0)) == [20, 21, 30, 31, 10, 11, 40]


def test_equal_priorities_go_in_task_order():
    d = dispatcher_with((2, 0, 1, 0, 600, [20]), (1, 0, 1, 0, 600, [10]), (3, 0, 1, 0, 600, [30]))

    assert jobs(d.take(cores=3, max_job_cores=1, max_job_memory_mb=0)) == [10, 20, 30]


def test_jobs_of_a_task_go_first_in_first_out():
    d = dispatcher_with((1, 0, 1, 0, 600, [5, 3, 9]))
    d.push(1, 7)

    assert jobs(d.take(cores=2, max_job_cores=1, max_job_memory_mb=0)) == [5, 3]
    assert jobs(d.take(cores=2, max_job_cores=1, max_job_memory_mb=0)) == [9, 7]


def test_a_returned_job_goes_to_the_front_of_its_task():
    d = dispatcher_with((1, 0, 1, 0, 600, [1, 2, 3]))
    (first,) = d.take(cores=1, max_job_cores=1, max_job_memory_mb=0)
    d.push(1, first[1], front=True)

    assert len(d) == 3
    assert jobs(d.take(cores=3, max_job_cores=1, max_job_memory_mb=0)) == [1, 2, 3]


def test_a_new_job_goes_to_the_back_of_its_task():
    d = dispatcher_with((1, 0, 1, 0, 600, [1, 2]))
    d.push(1, 3)

    assert len(d) == 3
    assert jobs(d.take(cores=3, max_job_cores=1, max_job_memory_mb=0)) == [1, 2, 3]


def test_a_task_added_later_with_higher_priority_goes_first():
    d = dispatcher_with((1, 0, 1, 0, 600, [1, 2]))
    d.add_task(2, 5, 1, 0, 600)
    d.extend(2, [3])

    assert jobs(d.take(cores=2, max_job_cores=1, max_job_memory_mb=0)) == [3, 1]


# ---- withdraw ---------------------------------------------------------------------------------

def test_a_withdrawn_job_is_never_handed_out_and_len_counts_it_out():
    d = dispatcher_with((1, 0, 1, 0, 600, [1, 2, 3]))
    d.withdraw(1, 2)

    assert len(d) == 2
    assert jobs(d.take(cores=3, max_job_cores=1, max_job_memory_mb=0)) == [1, 3]
    assert len(d) == 0
    assert d.take(cores=3, max_job_cores=1, max_job_memory_mb=0) == []


def test_withdrawn_jobs_do_not_use_up_the_budget():
    d = dispatcher_with((1, 0, 1, 0, 600, [1, 2, 3, 4]))
    d.withdraw(1, 1)
    d.withdraw(1, 2)

    assert jobs(d.take(cores=2, max_job_cores=1, max_job_memory_mb=0)) == [3, 4]
    assert len(d) == 0


def test_withdraw_in_a_task_that_is_not_reached_keeps_len_right():
    d = dispatcher_with((1, 5, 1, 0, 600, [1, 2]), (2, 0, 1, 0, 600, [3, 4]))
    d.withdraw(2, 4)

    assert len(d) == 3
    assert jobs(d.take(cores=2, max_job_cores=1, max_job_memory_mb=0)) == [1, 2]
    assert len(d) == 1
    assert jobs(d.take(cores=2, max_job_cores=1, max_job_memory_mb=0)) == [3]
    assert len(d) == 0


def test_len_is_the_number_of_jobs_take_would_give_out():
    d = dispatcher_with((1, 0, 1, 0, 600, range(1, 6)), (2, 3, 2, 0, 600, range(6, 9)))
    d.withdraw(1, 2)
    d.withdraw(2, 7)
    d.push(2, 9, front=True)

    expected = len(d)
    assert len(d.take(cores=1000, max_job_cores=8, max_job_memory_mb=0)) == expected == 7
    assert len(d) == 0


# ---- fits_any ---------------------------------------------------------------------------------

def test_fits_any_when_a_ready_job_fits():
    d = dispatcher_with((1, 0, 4, 2000, 600, [1]), (2, 0, 1, 100, 600, [2]))

    assert d.fits_any(max_job_cores=1, max_job_memory_mb=100)
    assert d.fits_any(max_job_cores=4, max_job_memory_mb=2000)


def test_fits_any_false_when_every_ready_job_is_too_big():
    d = dispatcher_with((1, 0, 4, 2000, 600, [1]), (2, 0, 2, 100, 600, [2]))

    assert not d.fits_any(max_job_cores=1, max_job_memory_mb=4000)
    assert not d.fits_any(max_job_cores=8, max_job_memory_mb=50)


def test_fits_any_false_once_the_small_jobs_are_taken():
    d = dispatcher_with((1, 0, 4, 0, 600, [1]), (2, 0, 1, 0, 600, [2]))
    d.take(cores=1, max_job_cores=1, max_job_memory_mb=0)

    assert not d.fits_any(max_job_cores=1, max_job_memory_mb=0)
    assert d.fits_any(max_job_cores=4, max_job_memory_mb=0)


def test_fits_any_false_with_no_ready_jobs():
    d = dispatcher_with((1, 0, 1, 0, 600, []))

    assert not d.fits_any(max_job_cores=64, max_job_memory_mb=10 ** 6)


def test_fits_any_false_when_the_only_fitting_job_was_withdrawn():
    d = dispatcher_with((1, 0, 4, 0, 600, [1]), (2, 0, 1, 0, 600, [2]))
    d.withdraw(2, 2)

    assert len(d) == 1
    assert not d.fits_any(max_job_cores=1, max_job_memory_mb=0)


def test_a_job_withdrawn_then_made_ready_again_is_handed_out_once():
    d = dispatcher_with((1, 0, 1, 0, 600, [1, 2, 3]))
    d.withdraw(1, 2)      # killed while ready
    d.push(1, 2, front=True)  # retried by hand before the dispatcher reached its old entry

    assert len(d) == 3
    assert jobs(d.take(cores=10, max_job_cores=1, max_job_memory_mb=0)) == [1, 2, 3]
    assert len(d) == 0


# ---- holes: free cores of single ranks ----------------------------------------------------------

def test_holes_are_filled_with_the_first_jobs_that_fit_each():
    # widest first: 3-core jobs, then 1-core ones; two ranks with 4 and 2 free cores
    d = dispatcher_with((1, 0, 3, 0, 600, [1, 2, 3]), (2, 0, 1, 0, 600, [10, 11, 12, 13]))

    taken = d.take(cores=6, max_job_cores=4, max_job_memory_mb=0, holes=[2, 4])

    # the 4-core hole: a 3-core job and the 1-core job that fills what it leaves; the 2-core hole:
    # two 1-core jobs (no 3-core job fits it)
    assert taken == [(1, 1), (2, 10), (2, 11), (2, 12)]
    assert len(d) == 3


def test_holes_no_job_fits_get_nothing_and_lose_nothing():
    d = dispatcher_with((1, 0, 4, 0, 600, [1, 2]))

    assert d.take(cores=3, max_job_cores=4, max_job_memory_mb=0, holes=[1, 2]) == []
    assert len(d) == 2
    assert jobs(d.take(cores=4, max_job_cores=4, max_job_memory_mb=0, holes=[4])) == [1]


def test_holes_come_first_and_the_rest_of_the_cores_is_prefetch():
    d = dispatcher_with((1, 0, 2, 0, 600, range(1, 11)), (2, 0, 1, 0, 600, [20, 21]))

    taken = d.take(cores=5, max_job_cores=4, max_job_memory_mb=0, holes=[1])

    # the 1-core hole gets the 1-core job; the 4 other cores: two 2-core jobs
    assert taken == [(2, 20), (1, 1), (1, 2)]


def test_holes_skip_withdrawn_jobs_and_respect_priority_and_walltime():
    d = dispatcher_with((1, 5, 1, 0, 7200, [1, 2]), (2, 0, 1, 0, 600, [3, 4, 5]))
    d.withdraw(2, 3)

    # the high-priority task needs 2 h, the worker has 1 h left: only task 2 (without job 3)
    assert d.take(cores=2, max_job_cores=4, max_job_memory_mb=0, remaining_s=3600, holes=[2]) == [(2, 4), (2, 5)]
    assert d.take(cores=1, max_job_cores=4, max_job_memory_mb=0, holes=[1]) == [(1, 1)]
    assert len(d) == 1
