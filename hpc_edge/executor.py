"""Runs payloads on the cores one rank owns.

Each payload runs in its own working directory and process group (its own session), with stdout and
stderr in files there; its exit code or signal, wall and CPU time and max RSS are recorded from
``wait4``, and what it left running in its process group is killed as it ends. Several payloads run
side by side when cores allow; a 4-core payload waits for 4 free cores (first fit over the local
queue, so small payloads backfill behind it).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import PLUGIN_CODE_RANGE, ErrorCode
from .esrunner import EventRunner
from .fastpath import FastPath, compiled_path
from .monitor import REPORT_NAME, check, child_pids, file_size, job_of, read_job_report
from .payload import (STDERR_NAME, STDOUT_NAME, Running, check_outputs, make_workdir, payload_argv,
                      payload_base_env, remove_dir)
from .protocol import JobEvent, JobSpec, RangeEvent
from .spawn import Spawner
from .watchdog import Watchdog

logger = logging.getLogger(__name__)

KILL_GRACE_S = 5.0
DOUBT_S = 2.0
STRAY_CHECK_S = 1.0
_TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


@dataclass
class Executor:
    """Payload slots of one rank: ``add`` work, then call ``step`` in the rank's loop."""

    rank: int
    cores: int
    memory_mb: int
    host: str = field(default_factory=socket.gethostname)
    base_env: dict[str, str] = field(default_factory=lambda: payload_base_env(os.environ))
    guard: bool = True  # a watchdog kills the payloads if this rank dies first
    # node-local directory (this rank's own) where payloads run instead of in their job's directory on
    # the shared filesystem; what is worth keeping is moved there when they end (see bring_back)
    scratch: str | None = None
    watchdog: Watchdog | None = None  # one started earlier (before MPI_Init); else one of its own if guard
    compiled: bool = field(default_factory=compiled_path)  # queued payloads run by hpc_edge/fastpath.py

    def __post_init__(self):
        self.queue: deque[JobSpec] = deque()
        self.running: dict[int, Running] = {}  # pid -> Running
        self.free_cores = self.cores
        self.free_memory_mb = self.memory_mb
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.es = EventRunner(self)
        self.term_signal_at: float | None = None  # set by a signal handler: this rank is being terminated
        if self.watchdog is None and self.guard:
            self.watchdog = Watchdog()
        self.spawner = Spawner(STDOUT_NAME, STDERR_NAME)
        self.doubtful: list[tuple[float, Running, int, object]] = []
        self.next_stray_check = 0.0
        self.waited = False  # the last step waited for payloads (the compiled path's budget)
        self.fast = FastPath(self) if self.compiled else None

    # ---- the loop's steps -------------------------------------------------------------------
    def add(self, specs: list[JobSpec]) -> None:
        self.queue.extend(specs)

    def step(self, wait_s: float = 0.0) -> list[JobEvent | RangeEvent]:
        """Reap what ended, start what fits; return the job and range events to report.

        With payloads queued and the compiled path, this runs them for up to ``wait_s`` (sooner when
        none is left to start and cores are free, or a signal or another child needs the caller),
        and ``waited`` says so: the caller need not wait for payloads again."""
        self.waited = False
        if self.queue and self.fast:
            budget = wait_s if self.waits_in_step else 0.0
            events, es_ended = self.fast.run(budget)
            self.waited = budget > 0
            if es_ended and self.queue:  # cores an event-service payload freed: use them
                events.extend(self.fast.run(0.0)[0])
        else:
            events = self.reap()
            events.extend(self.start_ready())
        events.extend(self.judge_doubtful())
        events.extend(self.es.step())
        self.enforce_limits()
        self.escalate_kills()
        if time.monotonic() >= self.next_stray_check:
            self.next_stray_check = time.monotonic() + STRAY_CHECK_S
            self.kill_strays()
        return events

    def kill_strays(self) -> None:
        """Kill what payloads that ended left running outside their process group (a daemon with a
        session of its own, a double fork). A worker's rank is the subreaper of its payloads'
        descendants (worker.py), so such a process, once its parent is gone, is a child of this rank
        that it did not start; the HPC_EDGE_JOB_ID in its environment says whose it is. It is left
        alone while that job runs here, and so is one without it (it cleared its environment)."""
        known = self.running.keys() | self.es.procs.keys()
        live = {run.spec.job_id for run in self.running.values()} | {
            proc.spec.job_id for proc in self.es.procs.values()}
        for pid in child_pids():
            if pid in known:
                continue
            job = job_of(pid)
            if job is None or job in live:
                continue
            logger.warning("rank %d: killing process %d that job %d left running", self.rank, pid, job)
            try:  # our child, not yet reaped: its pid (and the group it may lead) cannot be another's
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def enforce_limits(self) -> None:
        """Every few seconds, and at its walltime limit, check each payload against its job's limits;
        kill those over one."""
        now = time.monotonic()
        for run in self.running.values():
            limits = run.spec.limits
            if run.stop_reason is not None or now < run.next_check or not (
                    limits.looping_s or limits.max_output_mb or limits.max_workdir_mb or limits.memory_mb
                    or limits.max_walltime_s):
                continue
            first = not run.next_check
            run.next_check = now + limits.check_s
            if limits.max_walltime_s and run.start_mono + limits.max_walltime_s > now:
                run.next_check = min(run.next_check, run.start_mono + limits.max_walltime_s)
            if first:  # the first look is one interval after the start (or at the walltime limit)
                run.progress.since = now
                continue
            broken = check(run, now)
            if broken is not None:
                logger.warning("rank %d: job %d: %s", self.rank, run.spec.job_id, broken[1])
                self.kill({run.spec.job_id}, *broken)

    @property
    def waits_in_step(self) -> bool:
        """Whether step(wait_s) waits for payloads itself: compiled, with payloads queued, and no
        event-service payload (whose pipes only ``wait`` watches)."""
        return bool(self.queue) and self.fast is not None and not self.es.procs

    @property
    def idle(self) -> bool:
        return not self.queue and not self.running and self.es.idle

    @property
    def busy(self) -> bool:
        """Payload processes or stage-outs still under way."""
        return bool(self.running or self.doubtful or self.es.procs or self.es.staging)

    @property
    def load_cores(self) -> int:
        """Cores of all the work this rank holds (queued and running)."""
        return sum(s.cores for s in self.queue) + (self.cores - self.free_cores)

    def wakeup_fd(self) -> int:
        """An fd that becomes readable when a payload ends (install_sigchld_wakeup first)."""
        return self._wake_r

    def install_sigchld_wakeup(self) -> None:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def wait(self, timeout: float) -> None:
        """Sleep until a payload ends or the timeout passes."""
        select.select([self._wake_r, *self.es.fds()], [], [], timeout)
        self.drain_wakeups()

    def drain_wakeups(self) -> None:
        try:  # one read empties the pipe unless it was full: no second read to hear it is empty
            while len(os.read(self._wake_r, 4096)) == 4096:
                pass
        except BlockingIOError:
            pass

    # ---- starting -----------------------------------------------------------------------------
    def start_ready(self) -> list[JobEvent]:
        """First fit over the local queue; what does not fit keeps its place, and the rest of the queue
        is not touched once the cores are taken."""
        events: list[JobEvent] = []
        skipped: list[JobSpec] = []
        while self.queue and self.free_cores > 0:
            spec = self.queue.popleft()
            if spec.cores <= self.free_cores and spec.memory_mb <= self.free_memory_mb:
                events.append(self.start(spec))
            else:
                skipped.append(spec)
        self.queue.extendleft(reversed(skipped))
        return events

    def start(self, spec: JobSpec) -> JobEvent:
        now = time.time()
        env = {
            **self.base_env, **spec.env,
            "HPC_EDGE_JOB_ID": str(spec.job_id), "HPC_EDGE_TASK_ID": str(spec.task_id),
            "HPC_EDGE_ATTEMPT": str(spec.attempt), "HPC_EDGE_CORES": str(spec.cores),
            "HPC_EDGE_RANK": str(self.rank), "OMP_NUM_THREADS": str(spec.cores),
        }
        try:
            if self.scratch:
                workdir = f"{self.scratch}/{spec.job_id}.{spec.dispatch}"
                make_workdir(workdir)
            else:
                workdir = spec.workdir
                make_workdir(workdir, first=spec.dispatch == 1)
            pid = self.spawner.spawn(payload_argv(spec.command), workdir, env)
        except OSError as exc:
            logger.warning("rank %d: job %d could not start: %s", self.rank, spec.job_id, exc)
            return self._event(spec, "failed", now, start_time=now, end_time=now,
                               error_code=ErrorCode.START_FAILED, error_diag=f"could not start: {exc}")
        self.running[pid] = Running(spec, pid, now, time.monotonic(), workdir)
        if self.watchdog:
            self.watchdog.started(pid)
        self.free_cores -= spec.cores
        self.free_memory_mb -= spec.memory_mb
        return self._event(spec, "running", now, pid=pid, start_time=now)

    # ---- ending -------------------------------------------------------------------------------
    def reap(self) -> list[JobEvent]:
        events: list[JobEvent] = []
        while self.running or self.es.procs:
            try:  # WNOWAIT: an ended payload stays a zombie, so its pid still names its process group
                ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if ended is None:
                break
            pid = ended.si_pid
            if pid in self.running or pid in self.es.procs:
                # what a payload left running in its process group (``cmd &``) would hold cores the
                # next payload is given: it ends with the payload
                _killpg(pid, signal.SIGKILL)
            pid, status, usage = os.wait4(pid, 0)
            events.extend(self._reaped(pid, status, usage))
        return events

    def _reaped(self, pid: int, status: int, usage) -> list[JobEvent | RangeEvent]:
        """A child this rank has waited for: one of its payloads (or an event-service payload's), or a
        stray that was reparented here."""
        if pid in self.es.procs:
            return self.es.ended(pid, os.waitstatus_to_exitcode(status))
        run = self.release(pid)
        return [] if run is None else self._judge_end(run, status, usage)

    def release(self, pid: int) -> Running | None:
        """One of this rank's payloads has been waited for: no longer tracked or guarded, its cores and
        memory free again. None if the pid is not one of them."""
        run = self.running.pop(pid, None)
        if run is None:
            return None
        if self.watchdog:
            self.watchdog.ended(pid)
        self.free_cores += run.spec.cores
        self.free_memory_mb += run.spec.memory_mb
        return run

    def _judge_end(self, run: Running, status: int, usage) -> list[JobEvent]:
        code = os.waitstatus_to_exitcode(status)
        if run.stop_reason is None and -code in _TERMINATING_SIGNALS:
            # the batch system may signal every process of the job (scancel, walltime) a moment
            # before this rank hears of it: wait for that before blaming the payload
            self.doubtful.append((time.monotonic() + DOUBT_S, run, code, usage))
            return []
        return [self._ended(run, code, usage)]

    def judge_doubtful(self) -> list[JobEvent]:
        """Payloads killed by a terminating signal: preempted if the rank is being terminated too."""
        if not self.doubtful:
            return []
        now, events, still = time.monotonic(), [], []
        for deadline, run, code, usage in self.doubtful:
            if self.term_signal_at is not None:
                run.stop_reason = ErrorCode.WORKER_STOPPED
                run.stop_diag = f"killed by signal {-code} as the worker was terminated"
            elif now < deadline:
                still.append((deadline, run, code, usage))
                continue
            events.append(self._ended(run, code, usage))
        self.doubtful = still
        return events

    def _ended(self, run: Running, code: int, usage) -> JobEvent:
        event = self._judge(run, code, usage)
        if run.workdir != run.spec.workdir:
            event = self.bring_back(run, event)
        return event

    def bring_back(self, run: Running, event: JobEvent) -> JobEvent:
        """Move what a payload left on scratch into its job's directory, then remove the scratch one.

        A finished job brings back its declared outputs, its job report and its logs if not empty;
        any other end brings back everything, for a post-mortem. Nothing to bring back: the job's
        directory is not even created (no metadata traffic on the shared filesystem for it)."""
        spec, src = run.spec, run.workdir
        empty_logs: list[str] = []
        try:
            if event.state == "finished":  # its outputs are there (or it would have failed)
                names = [*spec.outputs, *(n for n in (REPORT_NAME,) if os.path.lexists(os.path.join(src, n)))]
                for log in (STDOUT_NAME, STDERR_NAME):
                    (names if file_size(os.path.join(src, log)) else empty_logs).append(log)
            else:
                names = os.listdir(src)
            if names:
                make_workdir(spec.workdir, first=spec.dispatch == 1)
                for name in names:
                    dst = os.path.join(spec.workdir, name)
                    if os.path.dirname(name):
                        os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.move(os.path.join(src, name), dst)
        except OSError as exc:
            # what is left stays on scratch (until the worker ends) for whoever looks into it
            logger.warning("rank %d: job %d: moving its files from scratch failed: %s", self.rank, spec.job_id, exc)
            if event.state == "finished":
                event = event._replace(
                    state="failed", error_code=ErrorCode.STAGEOUT_FAILED,
                    error_diag=f"moving its files from scratch to {spec.workdir} failed ({exc}); what is left "
                               f"stays in {src} on {self.host} until the worker ends"[:4000])
            return event
        remove_dir(src, empty_logs)
        return event

    def _judge(self, run: Running, code: int, usage) -> JobEvent:
        spec = run.spec
        end = time.time()
        measures = dict(
            pid=run.pid, start_time=run.start_time, end_time=end,
            wall_s=round(time.monotonic() - run.start_mono, 6),
            cpu_s=round(usage.ru_utime + usage.ru_stime, 6), max_rss_kb=int(usage.ru_maxrss),
        )
        exit_code, sig = (code, None) if code >= 0 else (None, -code)
        if run.stop_reason is not None:
            stopped = self._event(spec, _stop_state(run.stop_reason), end, exit_code=exit_code, signal=sig,
                                  error_code=run.stop_reason, error_diag=run.stop_diag, **measures)
            if code != 0 or run.stop_reason not in _PREEMPTIONS:
                return stopped
            # it exited 0 as its worker was stopping: if it did all that a finished job does (it may
            # have ended just before the signal, or ignored it), it finished and must not run again;
            # otherwise it was preempted, without using an attempt
            judged = self._judge_exit(run, end, exit_code, sig, dict(measures))
            return judged if judged.state == "finished" else stopped
        return self._judge_exit(run, end, exit_code, sig, measures)

    def _judge_exit(self, run: Running, end: float, exit_code: int | None, sig: int | None,
                    measures: dict) -> JobEvent:
        spec = run.spec
        report, refused = read_job_report(run.workdir)
        if refused:
            logger.warning("rank %d: job %d: %s", self.rank, spec.job_id, refused)
        if report is not None:
            measures["report"] = report
            if report["exitCode"] != 0:
                code_ = report["exitCode"] if report["exitCode"] in PLUGIN_CODE_RANGE else ErrorCode.PAYLOAD_REPORTED
                return self._event(spec, "failed", end, exit_code=exit_code, signal=sig, error_code=code_,
                                   error_diag=f"jobReport.json: exitCode {report['exitCode']}: {report['exitMsg']}"[:4000],
                                   **measures)
        if sig is not None:
            return self._event(spec, "failed", end, signal=sig, error_code=ErrorCode.KILLED_BY_SIGNAL,
                               error_diag=f"killed by signal {sig} ({_signame(sig)})", **measures)
        if exit_code != 0:
            return self._event(spec, "failed", end, exit_code=exit_code, error_code=ErrorCode.NONZERO_EXIT,
                               error_diag=f"exited with code {exit_code}", **measures)
        files, problem = check_outputs(run.workdir, spec.outputs)
        if problem is not None:
            code_, diag = problem
            return self._event(spec, "failed", end, exit_code=0, error_code=code_, error_diag=diag,
                               files=files, **measures)
        return self._event(spec, "finished", end, exit_code=0, files=files, **measures)

    def kill(self, job_ids: set[int], reason: ErrorCode, diag: str) -> list[JobEvent]:
        """Stop these jobs: queued ones end at once, running ones get SIGTERM then SIGKILL."""
        events = [self._event(s, _stop_state(reason), time.time(), error_code=reason, error_diag=diag)
                  for s in self.queue if s.job_id in job_ids]
        self.queue = deque(s for s in self.queue if s.job_id not in job_ids)
        for run in self.running.values():
            if run.spec.job_id in job_ids and run.stop_reason is None:
                run.stop_reason, run.stop_diag = reason, diag
                run.sigterm_at = time.monotonic()
                _killpg(run.pid, signal.SIGTERM)
                _killpg(run.pid, signal.SIGCONT)  # a stopped payload must run to die of SIGTERM
        return events

    def kill_all(self, reason: ErrorCode, diag: str) -> list[JobEvent | RangeEvent]:
        ids = {s.job_id for s in self.queue} | {r.spec.job_id for r in self.running.values()}
        return self.kill(ids, reason, diag) + self.es.kill_all(reason, diag)

    def escalate_kills(self) -> None:
        now = time.monotonic()
        for run in self.running.values():
            if run.sigterm_at is not None and now - run.sigterm_at > KILL_GRACE_S:
                _killpg(run.pid, signal.SIGKILL)

    def close(self) -> None:
        # the watchdog's pipe stays open until this process exits (after MPI_Finalize): it then kills
        # any payload group still guarded and removes MPI's shared memory if the end was not orderly
        self.spawner.close()
        self.kill_strays()  # no job runs any more: whatever a payload left goes
        if self.scratch and not self.running:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def hard_kill_all(self) -> None:
        """Last resort on exit: SIGKILL every payload group so none outlives its rank."""
        for pid in list(self.running):
            _killpg(pid, signal.SIGKILL)
        self.es.hard_kill_all()

    def _event(self, spec: JobSpec, state: str, t: float, **kw) -> JobEvent:
        # built by this module from checked values; the tower validates every event it receives
        return JobEvent(job_id=spec.job_id, dispatch=spec.dispatch, state=state, t=t, rank=self.rank,
                              host=self.host, **kw)


_PREEMPTIONS = (ErrorCode.WORKER_STOPPED, ErrorCode.WALLTIME_PREEMPTED)


def _stop_state(reason: ErrorCode) -> str:
    if reason is ErrorCode.KILLED_BY_USER:
        return "cancelled"
    return "failed" if reason.is_limit else "preempted"


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"
