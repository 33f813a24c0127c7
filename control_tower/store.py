"""The durable store: one SQLite file (WAL) owned by the tower process alone.

Writes are queued by the tower's handlers and committed in one transaction per loop turn (group
commit), before any reply that depends on them is sent. Job rows hold the summary of the latest
dispatch; ``attempts`` keeps every dispatch; ``events`` is the log of state changes.
"""

from __future__ import annotations

import heapq
import json
import logging
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from .workload import TaskSpec, expand

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    task_id INTEGER PRIMARY KEY, name TEXT NOT NULL, workload TEXT, spec TEXT NOT NULL,
    priority INTEGER NOT NULL, n_jobs INTEGER NOT NULL, created REAL NOT NULL,
    UNIQUE (workload, name));
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, idx INTEGER NOT NULL, inputs TEXT,
    state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 1, dispatch INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT, rank INTEGER, host TEXT, pid INTEGER, workdir TEXT,
    exit_code INTEGER, signal INTEGER, error_code INTEGER, error_diag TEXT,
    cpu_s REAL, wall_s REAL, max_rss_kb INTEGER, start_time REAL, end_time REAL, files TEXT, report TEXT,
    updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_task_state ON jobs (task_id, state);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL, dispatch INTEGER NOT NULL, attempt INTEGER NOT NULL, worker_id TEXT,
    state TEXT NOT NULL, rank INTEGER, host TEXT, exit_code INTEGER, signal INTEGER,
    error_code INTEGER, error_diag TEXT, cpu_s REAL, wall_s REAL, max_rss_kb INTEGER,
    start_time REAL, end_time REAL, PRIMARY KEY (job_id, dispatch));
CREATE TABLE IF NOT EXISTS ranges (
    job_id INTEGER NOT NULL, range_idx INTEGER NOT NULL, task_id INTEGER NOT NULL, file_idx INTEGER NOT NULL,
    first_event INTEGER NOT NULL, last_event INTEGER NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1, worker_id TEXT, rank INTEGER, host TEXT, output TEXT, size INTEGER,
    cpu_s REAL, wall_s REAL, exit_code INTEGER, signal INTEGER, error_code INTEGER, error_diag TEXT,
    updated REAL, PRIMARY KEY (job_id, range_idx));
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY, launcher TEXT NOT NULL, queue TEXT, batch_id TEXT, state TEXT NOT NULL,
    nodes INTEGER, ranks INTEGER, cores INTEGER, walltime_s REAL, submitted REAL, started REAL,
    ends_at REAL, ended REAL, last_seen REAL, last_seq INTEGER NOT NULL DEFAULT 0, applied_above TEXT,
    info TEXT);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, t REAL NOT NULL, kind TEXT NOT NULL, job_id INTEGER, worker_id TEXT,
    detail TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
"""

TERMINAL = ("finished", "failed", "cancelled")
_ENDED = frozenset(("done", "failed", "cancelled", "lost"))  # worker states that are not live

JOB_FIELDS = ("worker_id", "rank", "host", "pid", "exit_code", "signal", "error_code", "error_diag",
              "cpu_s", "wall_s", "max_rss_kb", "start_time", "end_time")
_JOB_FIELD_SET = frozenset(JOB_FIELDS)


_INSERT_ATTEMPT = "INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_EVENT = "INSERT INTO events (t, kind, job_id, worker_id, detail) VALUES (?,?,?,?,?)"


def _attempt_row(job_id: int, dispatch: int, attempt: int, state: str, f: dict) -> tuple:
    """An ``attempts`` row from an attempt's fields."""
    return (job_id, dispatch, attempt, f.get("worker_id"), state, f.get("rank"), f.get("host"),
            f.get("exit_code"), f.get("signal"), f.get("error_code"), f.get("error_diag"), f.get("cpu_s"),
            f.get("wall_s"), f.get("max_rss_kb"), f.get("start_time"), f.get("end_time"))


def _job_columns(fields: dict) -> dict:
    """The ``jobs`` columns an event's fields set (its files and report as JSON)."""
    cols = {k: v for k, v in fields.items() if k in _JOB_FIELD_SET}
    for key in ("files", "report"):
        if key in fields:
            value = fields[key]
            # most jobs declare no output: their "[]" without a trip through the JSON encoder
            cols[key] = "[]" if type(value) is list and not value else json.dumps(value)
    return cols


def _submitted_key(row: dict) -> float:
    submitted = row["submitted"]
    return float("-inf") if submitted is None else submitted


class StoreError(Exception):
    """The store file cannot be opened or is not an hpc-edge store."""


class StoreWriteError(StoreError):
    """The store cannot be written (a full disk, a quota, an I/O error): its transaction is rolled
    back and the tower must stop, since what it holds in memory is ahead of the store."""


class Store:
    def __init__(self, path: Path, synchronous: str = "FULL"):
        self.path = Path(path)
        self.synchronous = synchronous
        self.db: sqlite3.Connection | None = None
        self._pending = 0
        self.before_commit: list = []  # callables that put what their owners hold back into the transaction
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_stop = threading.Event()
        self.checkpointed = threading.Event()  # set after each background checkpoint (see start_checkpointer)
        self.failed: StoreWriteError | None = None  # set by abandon(): nothing more is committed
        self._workers: dict[str, dict] | None = None  # the workers table, as SELECT * reads it (see workers)
        self._workers_stale: set[str] = set()         # its rows to read again before they are used

    def open(self) -> "Store":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={self.synchronous}")
            self.db.execute("PRAGMA foreign_keys=OFF")
            self.db.executescript(SCHEMA)
            self.db.commit()
        except sqlite3.OperationalError as exc:  # it is one, or none yet, but cannot be written here
            raise self.abandon(exc) from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not a usable hpc-edge store: {exc}") from exc
        return self

    def close(self) -> None:
        self.stop_checkpointer()
        if self.db is not None:
            if self.failed is None:
                self.commit()
            self.db.close()
            self.db = None

    @contextmanager
    def writable(self):
        """Around work that writes to the store: a write that fails (an ``OperationalError``: full, I/O,
        read-only, locked) comes out as StoreWriteError, through abandon(). Other SQLite errors are
        bugs and come out as they are."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise self.abandon(exc) from exc

    def abandon(self, exc: BaseException) -> StoreWriteError:
        """A write failed: roll the open transaction back (SQLite may have done so itself, or not) and
        refuse to commit from now on; return the error to raise. What was committed before stays."""
        if self.failed is None:
            try:
                if self.db is not None:
                    self.db.rollback()
            except sqlite3.Error:
                pass
            self._checkpointer_stop.set()  # nothing more to copy: what is in the WAL stays there
            full = getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL"
            self.failed = StoreWriteError(
                f"cannot write the store {self.path}: {exc}; everything committed before is kept. "
                f"{'Free space (or raise the quota), then' if full else 'Once it can be written again,'} "
                f"carry on: hpc-edge run ... --resume, or hpc-edge tower start")
        return self.failed

    # ---- checkpoints ----------------------------------------------------------------------------
    def start_checkpointer(self, every_s: float = 0.5) -> None:
        """Checkpoint the WAL from a thread of its own instead of in a commit.

        By default SQLite checkpoints in the commit that takes the WAL past 1,000 pages: that commit then
        copies them into the database file and syncs it, tens of milliseconds in which the tower answers
        no one. Here the tower's connection never checkpoints; a second connection does PASSIVE
        checkpoints (they never block the writer) every ``every_s`` seconds. Durability is unchanged:
        a commit is durable once in the WAL, and a checkpoint is SQLite's own, crash-safe, copy."""
        if self._checkpointer is not None:
            return
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer_stop.clear()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, args=(every_s,),
                                              name="store-checkpointer", daemon=True)
        self._checkpointer.start()

    def stop_checkpointer(self) -> None:
        if self._checkpointer is None:
            return
        self._checkpointer_stop.set()
        self._checkpointer.join()
        self._checkpointer = None
        if self.db is not None:
            self.db.execute("PRAGMA wal_autocheckpoint=1000")  # SQLite's default, back in the commits

    def _checkpoint_loop(self, every_s: float) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        said = None  # the failure last logged: a full disk is said once, not every every_s
        try:
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            while not self._checkpointer_stop.wait(every_s):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if said is not None:
                        logger.warning("background checkpoints of %s work again", self.path)
                        said = None
                except sqlite3.Error as exc:
                    if str(exc) != said:
                        logger.warning("background checkpoint of %s failed: %s (retried every %g s)",
                                       self.path, exc, every_s)
                        said = str(exc)
                self.checkpointed.set()
        finally:
            db.close()

    def commit(self) -> None:
        if self.failed is not None:
            raise self.failed
        for write in self.before_commit:
            write()
        self.db.commit()

    # ---- tasks and jobs -------------------------------------------------------------------------
    def add_task(self, spec: TaskSpec, workload: str, chunk: int = 50_000) -> int:
        """Insert a task and all its jobs (activated), committed before returning."""
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO tasks (name, workload, spec, priority, n_jobs, created) VALUES (?,?,?,?,?,?)",
            (spec.name, workload, spec.model_dump_json(), spec.priority, spec.n_jobs, now))
        task_id = cur.lastrowid
        rows = []
        for job in expand(spec):
            rows.append((task_id, job.index, None if job.inputs is None else json.dumps(job.inputs), now))
            if len(rows) >= chunk:
                self._insert_jobs(rows)
                rows = []
        self._insert_jobs(rows)
        if spec.event_service:
            self._insert_ranges(task_id, spec)
        self.log("task", detail=f"task {spec.name} added with {spec.n_jobs} jobs")
        self.commit()
        return task_id

    def _insert_jobs(self, rows: list[tuple]) -> None:
        self.db.executemany(
            "INSERT INTO jobs (task_id, idx, inputs, state, updated) VALUES (?,?,?,'activated',?)", rows)

    def _insert_ranges(self, task_id: int, spec: TaskSpec) -> None:
        """Every range of every job, ready: generated inside SQLite (a recursive CTE per job), so a
        million ranges cost no Python loop."""
        jobs = self.db.execute("SELECT job_id, idx FROM jobs WHERE task_id=? ORDER BY idx", (task_id,)).fetchall()
        for job_id, idx in jobs:
            g = spec.job_grid(idx)
            self.db.execute(
                "WITH RECURSIVE r(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM r WHERE n + 1 < :count) "
                "INSERT INTO ranges (job_id, range_idx, task_id, file_idx, first_event, last_event, state) "
                "SELECT :job, n, :task, :file, :first + n * :step, min(:last, :first + n * :step + :step - 1),"
                " 'ready' FROM r",
                {"count": len(g), "job": job_id, "task": task_id, "file": g.file_idx, "first": g.first,
                 "last": g.last, "step": g.step})

    def range_states(self, task_id: int) -> Iterable[tuple]:
        """(job_id, range_idx, state, attempt, worker_id) of a task's ranges."""
        return self.db.execute("SELECT job_id, range_idx, state, attempt, worker_id FROM ranges WHERE task_id=?"
                               " ORDER BY job_id, range_idx", (task_id,))

    def assign_ranges(self, runs: list) -> None:
        """runs: (attempt, worker_id, updated, job_id, first range_idx, last range_idx) of ranges handed
        to a worker, consecutive ones as one run (one statement for a whole list of ranges)."""
        self.db.executemany("UPDATE ranges SET state='assigned', attempt=?, worker_id=?, rank=NULL, host=NULL,"
                            " output=NULL, size=NULL, cpu_s=NULL, wall_s=NULL, exit_code=NULL, signal=NULL,"
                            " error_code=NULL, error_diag=NULL, updated=? WHERE job_id=? AND range_idx BETWEEN ? AND ?",
                            runs)

    def set_ranges(self, rows: list[tuple]) -> None:
        """rows: (state, attempt, worker_id, rank, host, output, size, cpu_s, wall_s, exit_code, signal,
        error_code, error_diag, updated, job_id, range_idx)."""
        self.db.executemany("UPDATE ranges SET state=?, attempt=?, worker_id=?, rank=?, host=?, output=?, size=?,"
                            " cpu_s=?, wall_s=?, exit_code=?, signal=?, error_code=?, error_diag=?, updated=?"
                            " WHERE job_id=? AND range_idx=?", rows)

    def finish_ranges(self, rows: list[tuple]) -> None:
        """rows: (rank, host, output, size, cpu_s, wall_s, updated, job_id, range_idx) of ranges that
        finished on the worker, and in the attempt, they were assigned with: assign_ranges cleared
        the rest of their row, so only these columns change (a third less work than set_ranges)."""
        self.db.executemany("UPDATE ranges SET state='finished', rank=?, host=?, output=?, size=?, cpu_s=?, wall_s=?,"
                            " updated=? WHERE job_id=? AND range_idx=?", rows)

    def task_exists(self, workload: str, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM tasks WHERE workload=? AND name=?",
                               (workload, name)).fetchone() is not None

    def tasks(self) -> list[tuple[int, str, str | None, TaskSpec]]:
        return [(tid, name, wl, TaskSpec.model_validate_json(spec)) for tid, name, wl, spec in
                self.db.execute("SELECT task_id, name, workload, spec FROM tasks ORDER BY task_id")]

    def job_states(self) -> Iterable[tuple[int, int, str, str | None]]:
        """(job_id, task_id, state, worker_id) of every job, in id order."""
        return self.db.execute("SELECT job_id, task_id, state, worker_id FROM jobs ORDER BY job_id")

    def job_states_of(self, task_id: int) -> Iterable[tuple[int, int, str, str | None]]:
        return self.db.execute("SELECT job_id, task_id, state, worker_id FROM jobs WHERE task_id=? ORDER BY job_id",
                               (task_id,))

    def jobs_for_dispatch(self, job_ids: list[int]) -> dict[int, tuple]:
        """(task_id, idx, inputs, attempt, dispatch) of the given jobs."""
        out = {}
        for i in range(0, len(job_ids), 900):
            part = job_ids[i:i + 900]
            q = f"SELECT job_id, task_id, idx, inputs, attempt, dispatch FROM jobs WHERE job_id IN ({','.join('?' * len(part))})"
            for job_id, task_id, idx, inputs, attempt, dispatch in self.db.execute(q, part):
                out[job_id] = (task_id, idx, json.loads(inputs) if inputs else None, attempt, dispatch)
        return out

    def mark_sent(self, rows: list[tuple]) -> None:
        """rows: (dispatch, worker_id, workdir, t, job_id)."""
        self.db.executemany(
            "UPDATE jobs SET state='sent', dispatch=?, worker_id=?, workdir=?, updated=?, exit_code=NULL,"
            " signal=NULL, error_code=NULL, error_diag=NULL, start_time=NULL, end_time=NULL WHERE job_id=?",
            rows)
        self.db.executemany("INSERT INTO events (t, kind, job_id, worker_id, detail) VALUES (?, 'job', ?, ?, 'sent')",
                            [(r[3], r[4], r[1]) for r in rows])

    def set_job_state(self, job_id: int, state: str, t: float, fields: dict, attempt: int | None = None,
                      note: str | None = None) -> None:
        cols = _job_columns(fields)
        if attempt is not None:
            cols["attempt"] = attempt
        sets = ", ".join(f"{k}=?" for k in cols)
        self.db.execute(f"UPDATE jobs SET state=?, updated=?{', ' + sets if sets else ''} WHERE job_id=?",
                        (state, t, *cols.values(), job_id))
        self.log("job", job_id=job_id, worker_id=fields.get("worker_id"), detail=note or state, t=t)

    def end_jobs(self, rows: list[tuple[int, int, int, str, float, dict]]) -> None:
        """Close many attempts at once, as ``record_attempt`` then ``set_job_state`` would for each
        (job_id, dispatch, attempt, state, t, fields): the end of every job of a relay's update in a
        few statements."""
        self.db.executemany(_INSERT_ATTEMPT, [_attempt_row(job_id, dispatch, attempt, state, f)
                                              for job_id, dispatch, attempt, state, _, f in rows])
        updates: dict[tuple[str, ...], list[tuple]] = {}  # one statement per set of columns
        for job_id, _, _, state, t, fields in rows:
            cols = _job_columns(fields)
            updates.setdefault(tuple(cols), []).append((state, t, *cols.values(), job_id))
        for names, params in updates.items():
            sets = "".join(f", {k}=?" for k in names)
            self.db.executemany(f"UPDATE jobs SET state=?, updated=?{sets} WHERE job_id=?", params)
        self.db.executemany(_INSERT_EVENT, [(t, "job", job_id, fields.get("worker_id"), state)
                                            for job_id, _, _, state, t, fields in rows])

    def record_attempt(self, job_id: int, dispatch: int, attempt: int, state: str, f: dict) -> None:
        self.db.execute(_INSERT_ATTEMPT, _attempt_row(job_id, dispatch, attempt, state, f))

    def job(self, job_id: int) -> dict | None:
        cur = self.db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,))
        row = cur.fetchone()
        if row is None:
            return None
        out = dict(zip([c[0] for c in cur.description], row))
        out["files"] = json.loads(out["files"]) if out["files"] else []
        out["report"] = json.loads(out["report"]) if out["report"] else None
        out["inputs"] = json.loads(out["inputs"]) if out["inputs"] else None
        return out

    def jobs(self, state: str | None = None, task_id: int | None = None, limit: int = 1000,
             offset: int = 0) -> list[dict]:
        where, args = [], []
        if state:
            where.append("state=?")
            args.append(state)
        if task_id:
            where.append("task_id=?")
            args.append(task_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        cur = self.db.execute(
            f"SELECT job_id, task_id, idx, state, attempt, dispatch, worker_id, rank, host, exit_code,"
            f" signal, error_code, error_diag, wall_s, cpu_s, max_rss_kb FROM jobs {clause}"
            f" ORDER BY job_id LIMIT ? OFFSET ?", (*args, limit, offset))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def attempts(self, job_id: int) -> list[dict]:
        cur = self.db.execute("SELECT * FROM attempts WHERE job_id=? ORDER BY dispatch", (job_id,))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur]

    # ---- workers ------------------------------------------------------------------------------
    def add_worker(self, worker_id: str, launcher: str, queue: str | None, nodes: int, ranks: int,
                   cores: int, walltime_s: float | None) -> None:
        self.db.execute(
            "INSERT INTO workers (worker_id, launcher, queue, state, nodes, ranks, cores, walltime_s,"
            " submitted) VALUES (?,?,?,?,?,?,?,?,?)",
            (worker_id, launcher, queue, "submitted", nodes, ranks, cores, walltime_s, time.time()))
        self._workers_stale.add(worker_id)
        self.log("worker", worker_id=worker_id, detail="submitted")

    def workers_has(self, worker_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM workers WHERE worker_id=?", (worker_id,)).fetchone() is not None

    def update_worker(self, worker_id: str, **fields) -> None:
        if "info" in fields:
            fields["info"] = json.dumps(fields["info"])
        sets = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE workers SET {sets} WHERE worker_id=?", (*fields.values(), worker_id))
        self._workers_stale.add(worker_id)
        if "state" in fields:
            self.log("worker", worker_id=worker_id, detail=fields["state"])

    def set_worker_seqs(self, rows: list[tuple]) -> None:
        """rows: (last_seq, last_seen, applied_above, worker_id): the updates applied from each worker."""
        self.db.executemany("UPDATE workers SET last_seq=?, last_seen=?, applied_above=? WHERE worker_id=?", rows)
        if self._workers is None:
            return
        for last_seq, last_seen, applied_above, worker_id in rows:
            row = self._workers.get(worker_id)
            # the values as SQLite gives them back (INTEGER, REAL, TEXT columns); anything else: read again
            if row is None or type(last_seq) is not int or type(last_seen) is not float \
                    or type(applied_above) is not str:
                self._workers_stale.add(worker_id)
            else:
                row["last_seq"], row["last_seen"], row["applied_above"] = last_seq, last_seen, applied_above

    def worker_live(self, worker_id: str) -> bool:
        row = self._worker_rows().get(worker_id)
        return row is not None and row["state"] not in _ENDED

    def worker_states(self) -> dict[str, int]:
        """How many workers are in each state (from the table's copy in memory: see workers)."""
        counts: dict[str, int] = {}
        for row in self._worker_rows().values():
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        return counts

    def workers(self, live_only: bool = False, limit: int | None = None) -> list[dict]:
        """Every worker (or the live ones), by submission time, as fresh dicts; with a limit, the
        latest ``limit`` submitted only (found without sorting or copying the others: the web page asks
        for 50 live workers every 2 s, whatever their number).

        Read from a copy of the table kept in memory: the provisioner asks for the live workers twice a
        cycle, and with thousands of relays a SELECT of them all stalls the tower for tens of
        milliseconds. Every write to the table goes through this class, which keeps the copy exact: rows
        it wrote are read again (by key) before the next use, or patched with what SQLite stores."""
        rows = self._worker_rows()
        chosen = [row for row in rows.values() if not live_only or row["state"] not in _ENDED]
        if limit is not None and limit < len(chosen):
            # the last ``limit`` of the sorted list below: nlargest keeps the first of equal keys in
            # what it is given, so it is given the rows backwards, and its answer (latest first) is
            # turned round
            chosen = heapq.nlargest(limit, reversed(chosen), key=_submitted_key)
            chosen.reverse()
        out = [dict(row) for row in chosen]
        # NULLs first, as in SQL; a float key, not a tuple: 10,000 tuples alive through the sort are
        # enough to set off a full garbage collection, tens of milliseconds with thousands of relays
        out.sort(key=_submitted_key)
        return out

    def _worker_rows(self) -> dict[str, dict]:
        if self._workers is None:
            cur = self.db.execute("SELECT * FROM workers ORDER BY rowid")
            names = [c[0] for c in cur.description]
            self._workers = {row[0]: dict(zip(names, row)) for row in cur}
            self._workers_stale.clear()
        elif self._workers_stale:
            stale, self._workers_stale = list(self._workers_stale), set()
            gone = set(stale)
            for i in range(0, len(stale), 900):
                part = stale[i:i + 900]
                cur = self.db.execute(f"SELECT * FROM workers WHERE worker_id IN ({','.join('?' * len(part))})"
                                      " ORDER BY rowid", part)
                names = [c[0] for c in cur.description]
                for row in cur:
                    self._workers[row[0]] = dict(zip(names, row))  # in place; a new row goes last
                    gone.discard(row[0])
            for worker_id in gone:
                self._workers.pop(worker_id, None)
        return self._workers

    # ---- log ----------------------------------------------------------------------------------
    def log(self, kind: str, job_id: int | None = None, worker_id: str | None = None,
            detail: str | None = None, t: float | None = None) -> None:
        self.db.execute(_INSERT_EVENT, (t or time.time(), kind, job_id, worker_id, detail))

    def events(self, job_id: int | None = None, limit: int = 200) -> list[dict]:
        if job_id is None:
            cur = self.db.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            cur = self.db.execute("SELECT * FROM events WHERE job_id=? ORDER BY id LIMIT ?", (job_id, limit))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
