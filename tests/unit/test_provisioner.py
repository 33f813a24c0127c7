"""The provisioner against a batch system of the test's own (its decisions, not a scheduler's)."""

from __future__ import annotations

import asyncio

from control_tower.provisioner import Provisioner, QueueConfig
from control_tower.store import Store
from control_tower.tower import Tower, TowerConfig
from control_tower.workload import TaskSpec
from launchers import BatchState, Launcher


class FakeBatch(Launcher):
    """Every submitted job runs at once and stays running until cancelled."""

    name = "slurm"

    def __init__(self):
        self.jobs: dict[str, BatchState] = {}
        self.specs = []

    def submit(self, spec):
        batch_id = str(100 + len(self.jobs))
        self.jobs[batch_id] = BatchState.RUNNING
        self.specs.append(spec)
        return batch_id

    def status(self, ids):
        return {i: self.jobs.get(i, BatchState.UNKNOWN) for i in ids}

    def cancel(self, ids):
        for i in ids:
            self.jobs[i] = BatchState.CANCELLED


def setup(tmp_path, **queue):
    store = Store(tmp_path / "store.sqlite").open()
    tower = Tower(store, TowerConfig(curve=False), tmp_path)
    spec = TaskSpec(name="t", command="true", count=40, walltime=60)
    tower.book.add_task(store.add_task(spec, "w"), "t", spec)
    q = QueueConfig(name="q", launcher="slurm", walltime="1h", **queue)
    fake = FakeBatch()
    return tower, Provisioner(tower, [q], tmp_path, launchers={"slurm:q": fake}), fake


def test_limits_and_sizing(tmp_path):
    tower, prov, fake = setup(tmp_path, nodes=1, max_nodes=4, ranks_per_node=2, cores_per_rank=2,
                              max_running=2, max_queued=5)
    for _ in range(5):
        asyncio.run(prov.cycle())
    assert len(fake.specs) == 2, "never more than max_running workers"
    assert fake.specs[0].nodes == 4, "40 one-core jobs fill 4 nodes of 4 cores (the maximum)"


def test_worker_that_never_reaches_the_tower_is_cancelled(tmp_path):
    tower, prov, fake = setup(tmp_path, start_timeout_s=600, max_failed_starts=2, max_running=1)

    def ten_minutes_pass():
        for worker_id in prov.running_since:
            prov.running_since[worker_id] -= 601

    asyncio.run(prov.cycle())                    # submits; the fake runs it, no relay ever says hello
    (first,) = fake.jobs
    asyncio.run(prov.cycle())                    # seen running without a hello: its clock starts
    assert fake.jobs[first] is BatchState.RUNNING
    ten_minutes_pass()
    asyncio.run(prov.cycle())                    # past the start timeout: cancelled
    assert fake.jobs[first] is BatchState.CANCELLED
    asyncio.run(prov.cycle())                    # the cancel is seen (counted), and a new worker goes in
    assert prov.failed_starts["q"] == 1
    states = {w["worker_id"]: w["state"] for w in tower.store.workers()}
    assert states["q-00001"] == "cancelled"
    assert len(fake.jobs) == 2
    asyncio.run(prov.cycle())
    ten_minutes_pass()
    asyncio.run(prov.cycle())                    # the second one fails the same way: the queue gives up
    asyncio.run(prov.cycle())
    assert prov.failed_starts["q"] == 2
    assert prov.enabled is False and "died before reaching the tower" in prov.error


def test_workers_crashing_soon_after_their_hello_make_the_queue_give_up(tmp_path):
    import time

    tower, prov, fake = setup(tmp_path, max_failed_starts=2, max_running=1)

    def hello_then_crash(age_s: float) -> None:
        (batch_id,) = [b for b, s in fake.jobs.items() if s is BatchState.RUNNING]
        row = next(w for w in tower.store.workers(live_only=True) if w["batch_id"] == batch_id)
        tower.store.update_worker(row["worker_id"], state="running", started=time.time() - age_s)
        fake.jobs[batch_id] = BatchState.FAILED

    asyncio.run(prov.cycle())
    hello_then_crash(age_s=3600)   # failed after an hour of work: not a start problem
    asyncio.run(prov.cycle())
    assert prov.failed_starts["q"] == 0 and prov.enabled
    hello_then_crash(age_s=1)      # a relay that crashes right after its hello ...
    asyncio.run(prov.cycle())
    assert prov.failed_starts["q"] == 1 and prov.enabled
    hello_then_crash(age_s=1)      # ... again: the queue gives up instead of submitting forever
    asyncio.run(prov.cycle())
    assert prov.failed_starts["q"] == 2
    assert prov.enabled is False and "within 60 s" in prov.error
    submitted = len(fake.jobs)
    asyncio.run(prov.cycle())
    assert len(fake.jobs) == submitted


def test_a_worker_that_said_bye_and_exited_at_once_ended_as_it_said(tmp_path, caplog):
    """The batch system may report a worker's job ended before the tower has read its bye (a relay
    exits right after sending it; the files messenger is read every 50 ms): the bye still counts."""
    import logging

    from hpc_edge import protocol as p
    from hpc_edge.links import TO_TOWER, Mailbox

    tower, prov, fake = setup(tmp_path, max_running=1)
    asyncio.run(prov.cycle())
    ((batch_id, worker_id),) = [(w["batch_id"], w["worker_id"]) for w in tower.store.workers()]
    box = Mailbox(tower.messenger.worker_dir(worker_id) / TO_TOWER)
    box.put(p.encode(p.Hello(worker_id=worker_id, ranks=[p.RankInfo(rank=0, host="n1", cores=2, memory_mb=100)])))
    (hello,) = tower.messenger.poll()
    assert tower.handle_message(worker_id.encode(), hello[1]) == "hello"
    tower.flush()  # its welcome goes out
    box.put(p.encode(p.Bye(reason="drained: no more work")))
    fake.jobs[batch_id] = BatchState.FAILED  # e.g. a non-zero exit after its bye

    with caplog.at_level(logging.INFO, logger="control_tower.tower"):
        asyncio.run(prov.cycle())

    assert [w["state"] for w in tower.store.workers() if w["worker_id"] == worker_id] == ["done"]
    ended = [r.getMessage() for r in caplog.records if " returned to the pool" in r.getMessage()]
    assert len(ended) == 1 and ended[0].startswith(f"worker {worker_id} done (said bye: drained: no more work)"), ended
    assert prov.failed_starts.get("q", 0) == 0
