"""The executor's compiled per-payload path: queued payloads started and reaped by hpc_edge/_fastrun.c
for a few milliseconds at a time, with no Python between one payload's end and the next one's start.

It does what ``Executor.reap`` and ``Executor.start_ready`` do, with the same effects (hpc_edge/_fastrun.c
says how it starts a process); what needs judging (a non-zero exit, a signal, a job report, declared
outputs, logs to bring back) is handed to the executor's own code. Without the compiled module (no C
compiler at install) or with HPC_EDGE_PURE_PYTHON=1, the executor runs the Python path only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from .monitor import REPORT_NAME
from .payload import STDERR_NAME, STDOUT_NAME, Running, payload_argv
from .protocol import JobEvent, JobSpec, RangeEvent
from .spawn import FD_CHECK_S, close_on_exec_all

if TYPE_CHECKING:
    from .executor import Executor

try:
    from . import _fastrun
except ImportError:  # installed where no C compiler was found
    _fastrun = None

FAST_BATCH = 64  # queued jobs a call looks at (first fit among them)
_DONE = 1  # hpc_edge/_fastrun.c's flag of an ended payload with nothing left to judge


def compiled_path() -> bool:
    """Whether ranks start and reap payloads in compiled code: when it was built, unless
    HPC_EDGE_PURE_PYTHON=1 (the same path in Python: slower, for comparison or a suspected fault)."""
    return _fastrun is not None and os.environ.get("HPC_EDGE_PURE_PYTHON", "") != "1"


@dataclass
class Usage:
    """The part of wait4's rusage the executor reads."""

    ru_utime: float
    ru_stime: float
    ru_maxrss: int


class FastPath:
    """One executor's compiled path, and what it keeps between calls: the rank's payload environment
    encoded once, each command's argv, each queued job as the compiled code takes it."""

    def __init__(self, ex: Executor):
        self.ex = ex
        self._env: tuple[bytes, ...] | None = None
        self._names = (STDOUT_NAME.encode(), STDERR_NAME.encode(), REPORT_NAME.encode())
        self._argvs: dict[str, tuple[bytes, ...]] = {}
        # the queue's first jobs when the last call returned, and each as the compiled code takes it
        self._head: list[JobSpec] = []
        self._head_jobs: list[tuple] = []

    def run(self, budget_s: float) -> tuple[list[JobEvent | RangeEvent], bool]:
        """Start queued payloads and reap ended ones for up to ``budget_s``; the events, and whether an
        event-service payload ended (its cores are free for the queue).

        A payload that exited 0 with no job report and no outputs to check (on scratch, that left only
        empty logs, removed with its directory in the call) is reported finished at once; any other
        end is judged as ``Executor.reap`` would; one still running is tracked as ``Executor.start``
        would have; a child the call did not start (or did not see end) goes to ``Executor._reaped``."""
        ex = self.ex
        now = time.monotonic()
        if now - ex.spawner.fds_checked > FD_CHECK_S:
            close_on_exec_all()
            ex.spawner.fds_checked = now
        queue = ex.queue
        specs = list(queue) if len(queue) <= FAST_BATCH else list(islice(queue, FAST_BATCH))
        # the queue's head as the last call left it (what it did not start) is prepared already: the
        # same objects in the same order (a kill or a requeue makes them differ)
        head, head_jobs = self._head, self._head_jobs
        if len(head) <= len(specs) and specs[:len(head)] == head:
            jobs = head_jobs + [self.job(spec) for spec in specs[len(head):]]
        else:
            jobs = [self.job(spec) for spec in specs]
        watchdog = None
        if ex.watchdog:
            ex.watchdog.reserve(ex.free_cores)
            watchdog = ex.watchdog.table()
        if self._env is None:
            self._env = tuple(os.fsencode(f"{k}={v}") for k, v in ex.base_env.items())
        results = _fastrun.run(jobs, ex.free_cores, ex.free_memory_mb, budget_s, ex.wakeup_fd(), self._env,
                               self._names, (ex.running, ex.es.procs), watchdog, bool(ex.scratch))
        events: list[JobEvent | RangeEvent] = []
        es_ended = False
        taken: list[int] = []
        failed: list[int] = []
        for r in results:
            kind = r[0]
            if kind == 1:  # started and ended in the call
                _, i, pid, start_t, start_mono, status, utime, stime, maxrss, end_t, end_mono, flags = r
                spec = specs[i]
                taken.append(i)
                if flags & _DONE:
                    events.append(self.finished(spec, pid, start_t, start_mono, end_t, end_mono, utime + stime, maxrss))
                else:
                    run = Running(spec, pid, start_t, start_mono, os.fsdecode(jobs[i][2]))
                    events.extend(ex._judge_end(run, status, Usage(utime, stime, maxrss)))
            elif kind == 0:  # started, still running: tracked as start() would
                _, i, pid, start_t, start_mono = r
                spec = specs[i]
                taken.append(i)
                ex.running[pid] = Running(spec, pid, start_t, start_mono, os.fsdecode(jobs[i][2]))
                ex.free_cores -= spec.cores
                ex.free_memory_mb -= spec.memory_mb
                events.append(ex._event(spec, "running", start_t, pid=pid, start_time=start_t))
            elif kind == 2:  # a child not the call's own: one of the executor's running payloads, or not
                _, _, pid, end_t, end_mono, status, utime, stime, maxrss, flags = r
                if flags & _DONE:  # as for kind 1
                    run = ex.release(pid)
                    events.append(self.finished(run.spec, pid, run.start_time, run.start_mono, end_t, end_mono,
                                                utime + stime, maxrss))
                    continue
                es_ended = es_ended or pid in ex.es.procs
                events.extend(ex._reaped(pid, status, Usage(utime, stime, maxrss)))
            else:  # could not start: Executor.start tries again and says why
                failed.append(r[1])
        if taken or failed:
            gone = set(taken) | set(failed)
            if len(gone) == max(gone) + 1:
                for _ in gone:
                    queue.popleft()
                self._head, self._head_jobs = specs[len(gone):], jobs[len(gone):]
            else:
                kept = [i for i in range(len(specs)) if i not in gone]
                for _ in specs:
                    queue.popleft()
                queue.extendleft(reversed([specs[i] for i in kept]))
                self._head, self._head_jobs = [specs[i] for i in kept], [jobs[i] for i in kept]
            for i in failed:
                events.append(ex.start(specs[i]))
        else:
            self._head, self._head_jobs = specs, jobs
        return events, es_ended

    def finished(self, spec: JobSpec, pid: int, start_t: float, start_mono: float, end_t: float, end_mono: float,
                 cpu_s: float, maxrss: int) -> JobEvent:
        """The event of a payload that exited 0 with nothing to judge: what Executor._judge_exit says of it."""
        ex = self.ex
        return JobEvent(job_id=spec.job_id, dispatch=spec.dispatch, state="finished", t=end_t, rank=ex.rank,
                        host=ex.host, exit_code=0, pid=pid, start_time=start_t, end_time=end_t,
                        wall_s=round(end_mono - start_mono, 6), cpu_s=round(cpu_s, 6), max_rss_kb=maxrss)

    def job(self, spec: JobSpec) -> tuple:
        """A queued job as the compiled code takes it."""
        ex = self.ex
        argv = self._argvs.get(spec.command)
        if argv is None:
            argv = tuple(os.fsencode(a) for a in payload_argv(spec.command))
            if len(self._argvs) < 4096:
                self._argvs[spec.command] = argv
        path = spec.env["PATH"] if "PATH" in spec.env else ex.base_env.get("PATH", os.defpath)
        program = ex.spawner.program(argv[0].decode(), path)
        if ex.scratch:
            workdir, parent = f"{ex.scratch}/{spec.job_id}.{spec.dispatch}", None
        else:
            workdir = spec.workdir
            parent = os.fsencode(os.path.dirname(workdir)) if spec.dispatch == 1 else None
        extras = (*(os.fsencode(f"{k}={v}") for k, v in spec.env.items()),
                  b"HPC_EDGE_JOB_ID=%d" % spec.job_id, b"HPC_EDGE_TASK_ID=%d" % spec.task_id,
                  b"HPC_EDGE_ATTEMPT=%d" % spec.attempt, b"HPC_EDGE_CORES=%d" % spec.cores,
                  b"HPC_EDGE_RANK=%d" % ex.rank, b"OMP_NUM_THREADS=%d" % spec.cores)
        return (os.fsencode(program), argv, os.fsencode(workdir), parent, extras, spec.cores, spec.memory_mb,
                not spec.outputs)
