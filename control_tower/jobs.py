"""The tower's book of jobs: which are ready, which are out on which worker, how many in each state.

Held in memory for the hot paths (dispatch, updates) and mirrored into the store's open
transaction. Job states follow PanDA: activated -> sent -> running -> finished | failed | cancelled;
an attempt superseded by a retry or a preemption is recorded as ``closed``.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from pathlib import Path

from hpc_edge import protocol as p
from hpc_edge.errors import ErrorCode

from .dispatcher import Dispatcher
from .store import TERMINAL, Store
from .workload import TaskSpec, has_placeholders, render_command

logger = logging.getLogger(__name__)


# A job out on a worker: (task_id, worker_id, dispatch, attempt, state). A plain tuple of plain values,
# which the garbage collector stops tracking (a named tuple or an object it tracks for ever): a tower
# with many jobs out does not walk them all in each full collection, which lands on a request's time.
Inflight = tuple[int, str, int, int, str]


# an event's fields beyond its job, dispatch, state, time and files, with their places in the tuple
_EVENT_FIELDS = tuple((i, n) for i, n in enumerate(p.JobEvent._fields)
                      if n not in ("job_id", "dispatch", "state", "t", "files"))
_FILES = p.JobEvent._fields.index("files")


def event_fields(e: p.JobEvent) -> dict:
    """What a job event tells beyond its job, dispatch, state and time (fields that are None left out;
    its files as ``{"name", "size"}`` maps, as the store and the API show them)."""
    out = {name: e[i] for i, name in _EVENT_FIELDS if e[i] is not None}
    out["files"] = [{"name": name, "size": size} for name, size in e[_FILES]]
    return out


def counts_as_attempt(code: int | None) -> bool:
    try:
        return ErrorCode(code).counts_as_attempt
    except ValueError:
        return True  # a payload's or a plugin's own code


class JobBook:
    def __init__(self, store: Store, dispatcher: Dispatcher, jobs_dir: Path):
        self.store, self.dispatcher, self.jobs_dir = store, dispatcher, Path(jobs_dir)
        self.tasks: dict[int, tuple[str, TaskSpec]] = {}
        self.counts: dict[int, Counter] = {}
        self.inflight: dict[int, Inflight] = {}
        self.by_worker: dict[str, set[int]] = {}
        self.stale_events = 0
        self.backoff: list[tuple[float, int, int]] = []  # (ready at, job, task): retries waiting out a back-off
        self._consts: dict[int, tuple] = {}  # task id -> what its jobs' specs share (see _dispatch_consts)

    # ---- loading ------------------------------------------------------------------------------
    def load(self) -> None:
        for task_id, name, _workload, spec in self.store.tasks():
            self._register_task(task_id, name, spec)
        ready: dict[int, list[int]] = {}
        for job_id, task_id, state, worker_id in self.store.job_states():
            self.counts[task_id][state] += 1
            if self.tasks[task_id][1].event_service:
                continue  # the range book holds event-service jobs
            if state == "activated":
                ready.setdefault(task_id, []).append(job_id)
            elif state in ("sent", "starting", "running"):
                row = self.store.job(job_id)
                self._hold(job_id, (task_id, worker_id, row["dispatch"], row["attempt"], state))
        for task_id, ids in ready.items():
            self.dispatcher.extend(task_id, ids)

    def add_task(self, task_id: int, name: str, spec: TaskSpec) -> None:
        """Make a freshly stored task's jobs ready."""
        self._register_task(task_id, name, spec)
        ids = [j for j, t, state, _ in self.store.job_states_of(task_id) if state == "activated"]
        self.counts[task_id]["activated"] += len(ids)
        if not spec.event_service:
            self.dispatcher.extend(task_id, ids)

    def _register_task(self, task_id: int, name: str, spec: TaskSpec) -> None:
        self.tasks[task_id] = (name, spec)
        self._consts.pop(task_id, None)
        self.counts.setdefault(task_id, Counter())
        if spec.event_service:
            return
        self.dispatcher.add_task(task_id, spec.priority, spec.cores, spec.memory_mb, spec.walltime)

    # ---- bookkeeping helpers ------------------------------------------------------------------
    def _hold(self, job_id: int, inf: Inflight) -> None:
        self.inflight[job_id] = inf
        self.by_worker.setdefault(inf[1], set()).add(job_id)

    def _unhold(self, job_id: int) -> Inflight | None:
        inf = self.inflight.pop(job_id, None)
        if inf is not None:
            held = self.by_worker.get(inf[1])
            if held is not None:
                held.discard(job_id)
                if not held:
                    del self.by_worker[inf[1]]
        return inf

    def _move(self, task_id: int, old: str, new: str, n: int = 1) -> None:
        counts = self.counts[task_id]
        counts[old] -= n
        counts[new] += n

    def held_by(self, worker_id: str) -> set[int]:
        return set(self.by_worker.get(worker_id, ()))

    # ---- dispatch -----------------------------------------------------------------------------
    def dispatch(self, worker_id: str, cores: int, max_job_cores: int, max_job_memory_mb: int,
                 remaining_s: float | None, holes: list[int] | tuple = ()) -> list[p.JobSpec]:
        taken = self.dispatcher.take(cores, max_job_cores, max_job_memory_mb, remaining_s, holes)
        if not taken:
            return []
        rows = self.store.jobs_for_dispatch([job_id for _, job_id in taken])
        now = time.time()
        specs, sent = [], []
        inflight = self.inflight
        held = self.by_worker.setdefault(worker_id, set())
        per_task: dict[int, int] = {}
        consts = None
        const_task = 0
        JobSpec = p.JobSpec
        for task_id, job_id in taken:
            if task_id != const_task:
                consts = self._dispatch_consts(task_id)
                const_task = task_id
            prefix, name, task, command, fixed = consts
            _, idx, inputs, attempt, dispatch = rows[job_id]
            dispatch += 1
            workdir = f"{prefix}{job_id}/try{dispatch}"
            if command is None:
                cmd = render_command(task.command, index=idx, inputs=inputs, job_id=job_id, attempt=attempt,
                                     task=name, workload_dir=task.workload_dir)
            else:
                cmd = command
            # the per-task parts (limits, env, outputs) are built once per task and shared by its jobs'
            # records (which nobody changes in place); the relay validates every record it receives
            specs.append(JobSpec(job_id=job_id, task_id=task_id, attempt=attempt, dispatch=dispatch, command=cmd,
                                 workdir=workdir, **fixed))
            sent.append((dispatch, worker_id, workdir, now, job_id))
            inflight[job_id] = (task_id, worker_id, dispatch, attempt, "sent")
            held.add(job_id)
            per_task[task_id] = per_task.get(task_id, 0) + 1
        for task_id, n in per_task.items():
            self._move(task_id, "activated", "sent", n)
        self.store.mark_sent(sent)
        return specs

    def _dispatch_consts(self, task_id: int) -> tuple:
        """What every job of a task shares in its JobSpec: (workdir prefix, name, spec, fixed command or None,
        the constant fields). Built once per task."""
        consts = self._consts.get(task_id)
        if consts is None:
            name, task = self.tasks[task_id]
            command = None if has_placeholders(task.command) else task.command
            fixed = {"cores": task.cores, "memory_mb": task.memory_mb, "walltime_s": task.walltime,
                     "env": dict(task.env), "outputs": tuple(task.outputs), "limits": self.limits(task)}
            consts = self._consts[task_id] = (f"{self.jobs_dir / name}/", name, task, command, fixed)
        return consts

    @staticmethod
    def limits(task: TaskSpec) -> p.JobLimits:
        lim = task.limits
        return p.JobLimits(looping_s=lim.looping, max_output_mb=lim.max_output_mb, max_workdir_mb=lim.max_workdir_mb,
                           memory_mb=lim.memory_mb, max_walltime_s=lim.max_walltime, check_s=lim.check_every)

    # ---- events from relays -------------------------------------------------------------------
    def apply_all(self, worker_id: str, events: list[p.JobEvent]) -> None:
        """A relay's update, in order; the jobs it says finished are written together at the end
        (nothing reads them in between)."""
        finished: list[tuple] = []
        for e in events:
            if e.state != "finished":
                self.apply(worker_id, e)
                continue
            fields = self._current_fields(worker_id, e)
            if fields is None:
                continue
            task_id, _, dispatch, attempt, old = self._unhold(e.job_id)
            finished.append((e.job_id, dispatch, attempt, "finished", e.t, fields))
            self._move(task_id, old, "finished")
        if finished:
            self.store.end_jobs(finished)

    def apply(self, worker_id: str, e: p.JobEvent) -> None:
        fields = self._current_fields(worker_id, e)
        if fields is None:
            return
        if e.state == "running":
            task_id, _, dispatch, attempt, state = self.inflight[e.job_id]
            if state != "running":
                self._move(task_id, state, "running")
                self.inflight[e.job_id] = (task_id, worker_id, dispatch, attempt, "running")
                self.store.set_job_state(e.job_id, "running", e.t, fields)
            return
        self.end_attempt(e.job_id, e.state, e.t, fields)

    def _current_fields(self, worker_id: str, e: p.JobEvent) -> dict | None:
        """The event's fields (and its worker) if it is about the job's current dispatch on that worker;
        None, counted, if it is stale."""
        inf = self.inflight.get(e.job_id)
        if inf is None or inf[1] != worker_id or inf[2] != e.dispatch:
            self.stale_events += 1
            logger.debug("ignored a stale event (%s) for job %d dispatch %d from %s", e.state, e.job_id, e.dispatch,
                         worker_id)
            return None
        fields = event_fields(e)
        fields["worker_id"] = worker_id
        return fields

    def end_attempt(self, job_id: int, state: str, t: float, fields: dict) -> None:
        """Close the current dispatch of a held job: finished, failed (maybe retried), requeued, cancelled."""
        task_id, _, dispatch, attempt, old = self._unhold(job_id)
        _, spec = self.tasks[task_id]
        code = fields.get("error_code")
        if state == "failed" and counts_as_attempt(code) and attempt < spec.max_attempts \
                and spec.retries(code):
            self.store.record_attempt(job_id, dispatch, attempt, "closed", fields)
            self.store.set_job_state(job_id, "activated", t, fields, attempt=attempt + 1,
                                     note=f"closed attempt {attempt} ({fields.get('error_diag')}); retrying")
            if spec.retry_backoff:
                self._move(task_id, old, "activated")
                heapq.heappush(self.backoff, (time.monotonic() + spec.retry_backoff, job_id, task_id))
            else:
                self._requeue(job_id, task_id, old)
        elif state == "preempted" or (state == "failed" and not counts_as_attempt(code)):
            self.store.record_attempt(job_id, dispatch, attempt, "closed", fields)
            self.store.set_job_state(job_id, "activated", t, fields,
                                     note=f"closed dispatch {dispatch} ({fields.get('error_diag')}); requeued")
            self._requeue(job_id, task_id, old)
        else:
            self.store.record_attempt(job_id, dispatch, attempt, state, fields)
            self.store.set_job_state(job_id, state, t, fields)
            self._move(task_id, old, state)

    def _requeue(self, job_id: int, task_id: int, old_state: str) -> None:
        self._move(task_id, old_state, "activated")
        self.dispatcher.push(task_id, job_id, front=True)

    def release_backoffs(self) -> None:
        """Jobs whose retry back-off has passed become ready."""
        now = time.monotonic()
        while self.backoff and self.backoff[0][0] <= now:
            _, job_id, task_id = heapq.heappop(self.backoff)
            self.dispatcher.push(task_id, job_id, front=True)

    def retry(self, job_ids: list[int]) -> dict:
        """Send failed or cancelled jobs again by hand: one more attempt each, whatever max_attempts says."""
        retried, skipped = [], []
        now = time.time()
        for job_id in job_ids:
            row = self.store.job(job_id)
            if row is None or row["state"] not in ("failed", "cancelled") or self.tasks[row["task_id"]][1].event_service:
                skipped.append(job_id)
                continue
            self.store.set_job_state(job_id, "activated", now, {}, attempt=row["attempt"] + 1,
                                     note=f"retried by hand after {row['state']}")
            self._move(row["task_id"], row["state"], "activated")
            self.dispatcher.push(row["task_id"], job_id, front=True)
            retried.append(job_id)
        return {"retried": retried, "skipped": skipped}

    def release_worker(self, worker_id: str, code: ErrorCode, diag: str) -> int:
        """Every job still out on a worker that is gone goes back to the pool."""
        ids = sorted(self.by_worker.get(worker_id, ()))
        now = time.time()
        for job_id in ids:
            self.end_attempt(job_id, "preempted", now, {"worker_id": worker_id, "error_code": int(code),
                                                        "error_diag": diag})
        return len(ids)

    def reconcile(self, worker_id: str, holding: set[int]) -> list[int]:
        """Square the tower's view with what a (re)connecting relay says it holds.

        Jobs the tower sent to it that it does not know (the answer was lost, or is void because the
        relay said hello again) go back to the pool without using an attempt. Returns the jobs the
        relay holds that the tower gave elsewhere: the relay must drop them."""
        now = time.time()
        for job_id in sorted(self.held_by(worker_id) - holding):
            self.end_attempt(job_id, "preempted", now, {
                "worker_id": worker_id, "error_code": int(ErrorCode.LOST_WORKER),
                "error_diag": f"sent to {worker_id} but not received: returned to the pool"})
        return sorted(j for j in holding if (inf := self.inflight.get(j)) is None or inf[1] != worker_id)

    # ---- user actions -------------------------------------------------------------------------
    def kill(self, job_ids: list[int], reason: str) -> dict:
        cancelled, signalled, unknown = 0, 0, 0
        by_worker: dict[str, list[int]] = {}
        now = time.time()
        for job_id in job_ids:
            inf = self.inflight.get(job_id)
            if inf is not None:
                by_worker.setdefault(inf[1], []).append(job_id)
                signalled += 1
                continue
            row = self.store.job(job_id)
            if row is None:
                unknown += 1
            elif row["state"] == "activated":
                self.dispatcher.withdraw(row["task_id"], job_id)
                self.store.set_job_state(job_id, "cancelled", now, {"error_code": int(ErrorCode.KILLED_BY_USER),
                                                                     "error_diag": reason})
                self._move(row["task_id"], "activated", "cancelled")
                cancelled += 1
        return {"cancelled": cancelled, "signalled": signalled, "unknown": unknown, "by_worker": by_worker}

    # ---- summaries ----------------------------------------------------------------------------
    def totals(self) -> Counter:
        total = Counter()
        for counts in self.counts.values():
            total.update({k: v for k, v in counts.items() if v})
        return total

    def all_final(self) -> bool:
        totals = self.totals()
        return sum(totals.values()) == sum(totals[s] for s in TERMINAL)

    def task_summaries(self) -> list[dict]:
        return [{"task_id": tid, "name": name, "jobs": spec.n_jobs,
                 "states": {k: v for k, v in self.counts[tid].items() if v}}
                for tid, (name, spec) in self.tasks.items()]
