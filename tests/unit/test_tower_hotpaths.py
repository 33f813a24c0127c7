"""The tower's hot paths, made cheaper, still say exactly what the plain versions said: the specs a
dispatch hands out, the dispatcher's queues kept as runs of ids, a job event's fields, the store's
in-memory copy of the workers table, the workers' applied updates written once per turn, and WAL
checkpoints taken off the loop."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import deque

import msgpack
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from control_tower.dispatcher import Dispatcher
from control_tower.jobs import JobBook, event_fields
from control_tower.store import Store
from control_tower import tower as tower_module
from control_tower.tower import Tower, TowerConfig
from control_tower.workload import TaskSpec, render_command
from hpc_edge import protocol as p
from hpc_edge.errors import ErrorCode


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "tower.db").open()
    yield s
    s.close()


# ---- dispatch: the specs ------------------------------------------------------------------------

def plain_spec(book: JobBook, job_id: int) -> p.JobSpec:
    """A job's spec built the plain way: pathlib, render_command and a validated model per job."""
    row = book.store.job(job_id)
    name, task = book.tasks[row["task_id"]]
    workdir = book.jobs_dir / name / str(job_id) / f"try{row['dispatch']}"
    return p.JobSpec(
        job_id=job_id, task_id=row["task_id"], attempt=row["attempt"], dispatch=row["dispatch"],
        command=render_command(task.command, index=row["idx"], inputs=row["inputs"], job_id=job_id,
                               attempt=row["attempt"], task=name, workload_dir=task.workload_dir),
        cores=task.cores, memory_mb=task.memory_mb, walltime_s=task.walltime, workdir=str(workdir),
        env=dict(task.env), outputs=tuple(task.outputs), limits=JobBook.limits(task))


@pytest.mark.parametrize("command", ["sim --in {inputs} --job {job_id} --i {index} --try {attempt} {task}",
                                     "/bin/true", "echo ${HOME} {workload_dir}"])
def test_dispatched_specs_are_those_built_the_plain_way(store, tmp_path, command):
    spec = TaskSpec(name="sim.v1", command=command, inputs=["a b.root", "c.root", "d.root"], cores=2,
                    memory_mb=100, walltime=600, env={"MODE": "x"}, outputs=["out/*.root"],
                    limits={"looping": "10m", "max_output_mb": 5, "check_every": 2}, workload_dir="/w d")
    book = JobBook(store, Dispatcher(60), tmp_path / "jobs")
    task_id = store.add_task(spec, "wl")
    book.add_task(task_id, spec.name, spec)

    specs = book.dispatch("w1", 4, 8, 1000, None)

    assert [s.job_id for s in specs] == [1, 2]
    assert specs == [plain_spec(book, s.job_id) for s in specs]
    # and they are what the relay gets off the wire, every field valid
    assert p.decode(p.encode(p.Work.model_construct(req=1, jobs=specs))).jobs == specs
    # and sent again after a preemption: the next dispatch's directory
    book.release_worker("w1", ErrorCode.LOST_WORKER, "gone")
    again = book.dispatch("w2", 2, 8, 1000, None)
    assert again[0].workdir.endswith("/try2")
    assert again[0] == plain_spec(book, again[0].job_id)


def test_dispatch_counts_and_holds_every_job(store, tmp_path):
    book = JobBook(store, Dispatcher(60), tmp_path / "jobs")
    spec = TaskSpec(name="t", command="true", count=300, walltime=60)
    book.add_task(store.add_task(spec, "wl"), "t", spec)

    specs = book.dispatch("w1", 128, 1, 0, None)

    assert len(specs) == 128
    assert book.counts[1]["sent"] == 128 and book.counts[1]["activated"] == 172
    assert book.held_by("w1") == set(range(1, 129))
    assert {j: (state, worker) for j, (_, worker, _, _, state) in book.inflight.items()} == {
        j: ("sent", "w1") for j in range(1, 129)}
    assert dict(store.db.execute("SELECT state, count(*) FROM jobs GROUP BY state")) == {"sent": 128,
                                                                                         "activated": 172}


# ---- the dispatcher's queues as runs of ids -----------------------------------------------------

class PlainDispatcher:
    """The dispatcher's queues one id per entry: what the runs must behave like."""

    def __init__(self):
        self.ready: dict[int, deque] = {}
        self.withdrawn: set[int] = set()
        self.cores: dict[int, int] = {}

    def add_task(self, task_id, cores):
        self.ready[task_id], self.cores[task_id] = deque(), cores

    def push(self, task_id, job_id, front):
        if job_id in self.withdrawn:  # its entry is still queued: it comes back there, once
            self.withdrawn.discard(job_id)
            return
        (self.ready[task_id].appendleft if front else self.ready[task_id].append)(job_id)

    def take(self, budget):
        taken = []
        for task_id in sorted(self.ready, key=lambda t: (-self.cores[t], t)):
            queue = self.ready[task_id]
            while queue and budget > 0:
                job_id = queue.popleft()
                if job_id in self.withdrawn:
                    self.withdrawn.discard(job_id)
                    continue
                taken.append((task_id, job_id))
                budget -= self.cores[task_id]
        return taken


ops = st.lists(st.one_of(
    st.tuples(st.just("extend"), st.sampled_from([1, 2]), st.lists(st.integers(1, 60), max_size=12)),
    st.tuples(st.just("push"), st.sampled_from([1, 2]), st.integers(1, 60), st.booleans()),
    st.tuples(st.just("withdraw"), st.integers(0, 30)),
    st.tuples(st.just("take"), st.integers(0, 9)),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_runs_of_ids_give_out_what_one_id_per_entry_would(script):
    d, plain = Dispatcher(60), PlainDispatcher()
    for task_id, cores in ((1, 1), (2, 2)):
        d.add_task(task_id, 0, cores, 0, 600)
        plain.add_task(task_id, cores)
    queued: list[tuple[int, int]] = []  # (task, job) pushed and not yet given out or withdrawn
    for op in script:
        if op[0] == "extend":
            d.extend(op[1], op[2])
            plain.ready[op[1]].extend(op[2])
            queued += [(op[1], j) for j in op[2]]
        elif op[0] == "push":
            d.push(op[1], op[2], front=op[3])
            plain.push(op[1], op[2], op[3])
            queued.append((op[1], op[2]))
        elif op[0] == "withdraw" and queued:
            task_id, job_id = queued.pop(op[1] % len(queued))
            if job_id in plain.withdrawn:
                continue
            d.withdraw(task_id, job_id)
            plain.withdrawn.add(job_id)
        elif op[0] == "take":
            got = d.take(op[1], max_job_cores=8, max_job_memory_mb=0)
            assert got == plain.take(op[1])
            for pair in got:
                if pair in queued:
                    queued.remove(pair)
    assert d.take(10_000, max_job_cores=8, max_job_memory_mb=0) == plain.take(10_000)


def test_a_million_ready_jobs_are_a_few_runs():
    d = Dispatcher(60)
    d.add_task(1, 0, 1, 0, 600)
    d.extend(1, range(1, 1_000_001))
    d.push(1, 7, front=True)
    assert len(d.ready[1]) == 2 and len(d) == 1_000_001
    assert [j for _, j in d.take(3, 1, 0)] == [7, 1, 2]


# ---- a job event's fields -----------------------------------------------------------------------

@pytest.mark.parametrize("kw, fields", [
    ({}, {"files": []}),
    ({"rank": 0, "host": "n1", "pid": 42, "start_time": 1.0},
     {"rank": 0, "host": "n1", "pid": 42, "start_time": 1.0, "files": []}),
    ({"exit_code": 1, "signal": None, "error_code": 1201, "error_diag": "boom", "cpu_s": 0.5, "wall_s": 0.7,
      "max_rss_kb": 10, "end_time": 2.0, "files": (p.FileInfo("a.root", 3),), "report": {"x": None, "y": [1, {"z": None}]}},
     {"exit_code": 1, "error_code": 1201, "error_diag": "boom", "cpu_s": 0.5, "wall_s": 0.7, "max_rss_kb": 10,
      "end_time": 2.0, "files": [{"name": "a.root", "size": 3}], "report": {"x": None, "y": [1, {"z": None}]}}),
])
def test_event_fields_are_the_event_without_nones_and_its_files_as_maps(kw, fields):
    e = p.JobEvent(job_id=3, dispatch=2, state="finished", t=5.0, **kw)
    assert event_fields(e) == fields
    # the same off the wire (a file is an array there)
    assert event_fields(p.decode(p.encode(p.Update(seq=1, events=[e]))).events[0]) == fields


# ---- the store's copy of the workers table ------------------------------------------------------

def sql_workers(store: Store, live_only: bool) -> list[dict]:
    clause = "WHERE state NOT IN ('done','failed','cancelled','lost')" if live_only else ""
    cur = store.db.execute(f"SELECT * FROM workers {clause} ORDER BY submitted")
    names = [c[0] for c in cur.description]
    return [dict(zip(names, row)) for row in cur]


def check_workers(store: Store) -> None:
    for live_only in (False, True):
        assert store.workers(live_only=live_only) == sql_workers(store, live_only)


def test_the_workers_copy_follows_every_write(store):
    check_workers(store)
    store.add_worker("a", "slurm", "q", 2, 4, 8, 3600)        # an int walltime: SQLite keeps a REAL
    store.add_worker("b", "external", None, 1, 1, 2, None)
    check_workers(store)
    store.update_worker("a", batch_id=123, state="queued")  # an int into a TEXT column: read back as text
    store.update_worker("b", state="running", started=1.5, info={"ranks": [{"rank": 0}]}, ends_at=None)
    check_workers(store)
    store.set_worker_seqs([(3, 10.5, "[5]", "b"), (1, 11.0, "[]", "nobody")])
    check_workers(store)
    store.set_worker_seqs([(True, 12, b"[]", "a")])        # odd types: the row is read again
    check_workers(store)
    store.update_worker("a", state="lost", ended=20.0)
    store.add_worker("c", "external", None, 1, 1, 2, None)
    check_workers(store)
    rows = store.workers()
    rows[0]["state"] = "scribbled on"                       # callers get copies
    check_workers(store)


def test_the_latest_workers_with_a_limit_are_the_tail_of_the_whole_list(store):
    # equal submission times (and NULLs, which sort first) at every boundary; ended ones in between
    for i, submitted in enumerate([5.0, None, 3.0, 5.0, 5.0, None, 1.0, 5.0, 3.0]):
        store.add_worker(f"w{i}", "external", None, 1, 1, 2, None)
        store.update_worker(f"w{i}", submitted=submitted, state="lost" if i % 4 == 3 else "running")
    for live_only in (False, True):
        whole = store.workers(live_only=live_only)
        assert [w["worker_id"] for w in whole] == [w["worker_id"] for w in sql_workers(store, live_only)]
        for limit in range(1, len(whole) + 2):
            assert store.workers(live_only=live_only, limit=limit) == whole[-limit:], (live_only, limit)


def test_the_workers_copy_is_read_from_an_existing_store(tmp_path):
    path = tmp_path / "tower.db"
    first = Store(path).open()
    first.add_worker("a", "external", None, 1, 1, 2, None)
    first.update_worker("a", state="running", last_seq=4)
    first.close()
    again = Store(path).open()
    assert [(w["worker_id"], w["state"], w["last_seq"]) for w in again.workers(live_only=True)] == [("a", "running", 4)]
    again.close()


# ---- applied updates, written once per turn -----------------------------------------------------

class Wire:
    """Stands in for the tower's socket: what the tower sends, and when."""

    def __init__(self, store: Store):
        self.store, self.sent = store, []

    def send_multipart(self, frames, flags=0):
        identity, data = frames
        last_seq = self.store.db.execute("SELECT last_seq FROM workers WHERE worker_id=?",
                                         (identity.decode(),)).fetchone()[0]
        self.sent.append((msgpack.unpackb(data), last_seq))


def test_an_update_is_acked_only_with_its_seq_in_the_store(store, tmp_path):
    tower = Tower(store, TowerConfig(curve=False), tmp_path)
    spec = TaskSpec(name="t", command="true", count=4, walltime=60)
    tower.book.add_task(store.add_task(spec, "w"), "t", spec)
    wire = tower._raw = Wire(store)
    hello = p.Hello(worker_id="r1", ranks=[p.RankInfo(rank=0, host="h", cores=2, memory_mb=10)])
    tower.handle_message(b"r1", p.encode(hello))
    tower.handle_message(b"r1", p.encode(p.Request(req=1, cores=2, max_job_cores=2, max_job_memory_mb=10)))
    tower.flush()
    wire.sent.clear()

    for seq, state in ((1, "running"), (2, "finished")):
        event = p.JobEvent(job_id=1, dispatch=1, state=state, t=1.0)
        tower.handle_message(b"r1", p.encode(p.Update(seq=seq, events=[event])))
    tower.handle_message(b"r1", p.encode(p.Update(seq=1, events=[p.JobEvent(job_id=1, dispatch=1,
                                                                             state="running", t=1.0)])))
    tower.flush()

    assert [(m["kind"], m["seq"]) for m, _ in wire.sent] == [("ack", 1), ("ack", 2), ("ack", 1)]
    assert all(last_seq == 2 for _, last_seq in wire.sent), "each ack goes out with its update in the store"
    assert tower.stats["duplicate_updates"] == 1
    row = next(w for w in store.workers() if w["worker_id"] == "r1")
    assert (row["last_seq"], json.loads(row["applied_above"])) == (2, [])


def test_a_commit_by_anyone_carries_the_applied_updates(store, tmp_path):
    tower = Tower(store, TowerConfig(curve=False), tmp_path)
    spec = TaskSpec(name="t", command="true", count=4, walltime=60)
    tower.book.add_task(store.add_task(spec, "w"), "t", spec)
    hello = p.Hello(worker_id="r1", ranks=[p.RankInfo(rank=0, host="h", cores=1, memory_mb=10)])
    tower.handle_message(b"r1", p.encode(hello))
    tower.handle_message(b"r1", p.encode(p.Request(req=1, cores=1, max_job_cores=1, max_job_memory_mb=10)))
    # out of order after a reconnect: 2 before 1
    tower.handle_message(b"r1", p.encode(p.Update(seq=2, events=[p.JobEvent(job_id=1, dispatch=1,
                                                                             state="running", t=1.0)])))
    store.commit()  # e.g. the API's, between two turns

    other = sqlite3.connect(store.path)
    assert other.execute("SELECT last_seq, applied_above FROM workers").fetchone() == (0, "[2]")
    other.close()


class Queued(Wire):
    """Also stands in for the tower's receiving side: messages waiting in the socket for one turn."""

    def __init__(self, store: Store, tower: Tower, waiting: list[tuple[bytes, bytes]]):
        super().__init__(store)
        self.tower, self.waiting = tower, list(waiting)

    async def poll(self, timeout_ms, flags):
        return bool(self.waiting)

    def recv_multipart(self, flags=0, copy=True):
        if not self.waiting:
            raise zmq.Again()
        return self.waiting.pop(0)

    def send_multipart(self, frames, flags=0):
        identity, data = frames
        other = sqlite3.connect(self.store.path)  # what is committed
        sent = other.execute("SELECT count(*) FROM jobs WHERE state='sent' AND worker_id=?",
                             (identity.decode(),)).fetchone()[0]
        other.close()
        self.sent.append((msgpack.unpackb(data)["kind"], self.tower.stats["updates"], sent))


def test_a_request_is_answered_before_the_updates_queued_behind_it_are_applied(store, tmp_path, monkeypatch):
    monkeypatch.setattr(tower_module, "EARLY_ANSWER_S", 0.0)  # not held back by the hello's flush just before
    tower = Tower(store, TowerConfig(curve=False), tmp_path)
    spec = TaskSpec(name="t", command="true", count=4, walltime=60)
    tower.book.add_task(store.add_task(spec, "w"), "t", spec)
    wire = tower._raw = tower.sock = tower.monitor = Queued(store, tower, [])
    hello = p.Hello(worker_id="r1", ranks=[p.RankInfo(rank=0, host="h", cores=2, memory_mb=10)])
    tower.handle_message(b"r1", p.encode(hello))
    tower.flush()
    update = p.Update(seq=1, events=[p.JobEvent(job_id=1, dispatch=1, state="running", t=1.0)])
    wire.sent.clear()
    wire.waiting = [(b"r1", p.encode(p.Request(req=1, cores=2, max_job_cores=2, max_job_memory_mb=10))),
                    (b"r1", p.encode(update))]

    asyncio.run(tower.turn(timeout_ms=0))

    # the work went out committed (2 jobs 'sent' in the store) with no update applied yet; the ack
    # after the update (job 1 now running), at the end of the turn
    assert wire.sent == [("work", 0, 2), ("ack", 1, 1)]
    assert tower.book.held_by("r1") == {1, 2}


def test_a_message_not_framed_as_identity_and_data_is_counted_and_the_rest_handled(store, tmp_path):
    tower = Tower(store, TowerConfig(curve=False), tmp_path)
    spec = TaskSpec(name="t", command="true", count=4, walltime=60)
    tower.book.add_task(store.add_task(spec, "w"), "t", spec)
    wire = tower._raw = tower.sock = tower.monitor = Queued(store, tower, [])
    hello = p.Hello(worker_id="r1", ranks=[p.RankInfo(rank=0, host="h", cores=2, memory_mb=10)])
    request = p.encode(p.Request(req=1, cores=2, max_job_cores=2, max_job_memory_mb=10))
    wire.waiting = [[b"r1", p.encode(hello)], [b"r1", b"", request], [b"r1"], [b"r1", request]]

    asyncio.run(tower.turn(timeout_ms=0))

    assert tower.rejected["framing"] == 2
    assert [kind for kind, _, _ in wire.sent] == ["welcome", "work"]
    assert tower.book.held_by("r1") == {1, 2}


# ---- checkpoints off the loop -------------------------------------------------------------------

def test_background_checkpoints_keep_every_commit(tmp_path):
    path = tmp_path / "tower.db"
    store = Store(path).open()
    store.start_checkpointer(every_s=0.01)
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    spec = TaskSpec(name="t", command="true", count=5000, walltime=60)
    store.add_task(spec, "w")
    store.checkpointed.clear()
    assert store.checkpointed.wait(60), "the checkpointer runs"
    for i in range(50):
        store.log("note", detail=str(i))
        store.commit()
    store.checkpointed.clear()
    assert store.checkpointed.wait(60)
    store.stop_checkpointer()
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)
    store.close()

    again = sqlite3.connect(path)
    assert again.execute("SELECT count(*) FROM jobs").fetchone() == (5000,)
    assert again.execute("SELECT count(*) FROM events WHERE kind='note'").fetchone() == (50,)
    again.close()


def test_closing_the_store_stops_its_checkpointer(tmp_path):
    store = Store(tmp_path / "tower.db").open()
    store.start_checkpointer(every_s=0.01)
    thread = store._checkpointer
    store.close()
    assert not thread.is_alive()
