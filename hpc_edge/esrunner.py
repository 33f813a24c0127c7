"""Event-service payloads on a rank: long-lived processes fed ranges over a pipe.

A payload process is started for a job when the rank holds ranges of it and has the cores; each time
it says ``Ready for events`` it gets a list of ranges, and ``No more events`` when the job has none
left (or its cores are wanted elsewhere). The list is one range until the payload has reported a few;
then as many as it does in about ``BATCH_WINDOW_S`` (at most ``MAX_BATCH``), so short ranges do not
each wait a round trip. Finished ranges' outputs are renamed into the job's output area at once (a
stage-out thread copies them when the output area is on another filesystem). A payload that dies
fails only the range in flight, the first one of its list it had not reported; the rest of the list
goes back to the queue without an attempt, and to a new process.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from . import eventservice as es
from .errors import ErrorCode
from .payload import payload_argv
from .protocol import JobSpec, RangeEvent, RangeSpec

logger = logging.getLogger(__name__)

BATCH_WINDOW_S = 0.02  # a list of ranges should keep a payload busy about this long ...
MAX_BATCH = 256        # ... and hold at most this many
# finished ranges' outputs go into directories of at most this many, one rank's own at a time: renaming
# into a directory of 10^4-10^5 entries that every rank of every node writes into is slower on every
# filesystem (on this ext4, 20-23 us per lstat + rename against 14-16 us into directories of 100;
# on Lustre, creates in one directory contend for its one lock)
OUTPUTS_PER_DIR = 128
CLOSE_GRACE_S = 5.0  # at a stop, a payload with no range in flight is told "No more events" and has this
                     # long to end by itself (finish its logs, its own clean-up) before SIGTERM


class ESProcess:
    """One event-service payload process and the ranges it was sent and has not reported."""

    def __init__(self, spec: JobSpec, workdir: Path, proc: subprocess.Popen, out):
        self.spec, self.workdir, self.proc, self.out = spec, workdir, proc, out
        self.dir = str(workdir)  # the payload's directory and the job's output area, as strings: a
        self.area = os.path.join(spec.output_dir or self.dir, "ranges")  # finished range's output is moved there
        self.state = "starting"  # starting | ready | busy | closing
        self.inflight: dict[str, RangeSpec] = {}  # sent and not yet reported, in the order sent
        self.started_at = 0.0  # when the range now in flight started (the list's send, or the last report)
        self.buffer = b""
        self.stop_reason: tuple[ErrorCode, str] | None = None
        self.sigterm_at: float | None = None
        self.close_by: float | None = None  # told "No more events" at a stop: SIGTERM if still running then
        self.eof = False  # its stdout is closed: nothing more to read, and not to be waited on
        os.set_blocking(proc.stdout.fileno(), False)

    @property
    def fd(self) -> int:
        return self.proc.stdout.fileno()

    def read_lines(self) -> list[str]:
        chunks = []
        try:
            while True:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.eof = True
                    break
                chunks.append(chunk)
        except BlockingIOError:
            pass
        data = self.buffer + b"".join(chunks)
        *lines, self.buffer = data.split(b"\n")
        return [line.decode(errors="replace") for line in lines]

    def send(self, text: str) -> bool:
        try:
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False


class StageOut(threading.Thread):
    """Moves finished ranges' outputs to the output area, off the rank's loop."""

    def __init__(self, wake_fd: int | None = None):
        super().__init__(daemon=True, name="stage-out")
        self.todo: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.pending = 0
        self.wake_fd = wake_fd  # written after each move, so the rank's loop wakes at once

    def submit(self, event: RangeEvent, src: Path, dest: Path) -> None:
        self.pending += 1
        self.todo.put((event, src, dest))

    def run(self) -> None:
        while True:
            event, src, dest = self.todo.get()
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(src, dest)
                event = event._replace(output=str(dest), size=dest.stat().st_size)
            except OSError as exc:
                event = event._replace(state="failed", error_code=int(ErrorCode.STAGEOUT_FAILED),
                                       error_diag=f"stage-out of {src} to {dest} failed: {exc}"[:4000])
            self.done.put(event)
            if self.wake_fd is not None:
                try:
                    os.write(self.wake_fd, b"s")
                except (BlockingIOError, OSError):
                    pass  # the pipe is full: the loop is awake anyway

    def collect(self) -> list[RangeEvent]:
        events = []
        while True:
            try:
                events.append(self.done.get_nowait())
            except queue.Empty:
                break
        self.pending -= len(events)
        return events


class EventRunner:
    """The event-service half of a rank's executor (it shares the executor's cores)."""

    def __init__(self, executor):
        self.ex = executor
        self.jobs: dict[int, JobSpec] = {}
        self.mean_wall: dict[int, float] = {}  # job id -> mean wall time of its ranges (payload-reported)
        self.n_reported: dict[int, int] = {}   # job id -> ranges reported on this rank
        self._dirs: dict[str, list] = {}       # output area -> [its directory this rank fills now, outputs in it]
        self._n_dirs = 0
        self.queues: dict[int, deque[RangeSpec]] = {}
        self.exhausted: set[int] = set()
        self.procs: dict[int, ESProcess] = {}  # pid -> process
        self._stage_out: StageOut | None = None  # started on the first copy across filesystems
        self._n = 0

    # ---- input --------------------------------------------------------------------------------
    def add(self, jobs: list[JobSpec], ranges: list[RangeSpec]) -> None:
        for spec in jobs:
            self.jobs[spec.job_id] = spec
        for r in ranges:
            self.queues.setdefault(r.job_id, deque()).append(r)
            self.exhausted.discard(r.job_id)

    def mark_exhausted(self, job_ids) -> None:
        self.exhausted.update(job_ids)

    @property
    def stage_out(self) -> StageOut:
        if self._stage_out is None:
            self._stage_out = StageOut(self.ex._wake_w)
            self._stage_out.start()
        return self._stage_out

    @property
    def staging(self) -> int:
        """Copies under way in the stage-out thread."""
        return self._stage_out.pending if self._stage_out else 0

    @property
    def idle(self) -> bool:
        return not self.procs and not any(self.queues.values()) and not self.staging

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def fds(self) -> list[int]:
        """The payloads' stdout to wait on; not one at its end (always readable: a payload that closed
        its stdout and runs on would keep the loop from ever sleeping; its exit wakes it anyway)."""
        return [p.fd for p in self.procs.values() if not p.eof]

    # ---- the loop's step ----------------------------------------------------------------------
    def step(self) -> list[RangeEvent]:
        events = self._stage_out.collect() if self._stage_out else []
        for proc in list(self.procs.values()):
            events += self.read(proc)
        events += self.feed()
        self.start_needed()
        self.escalate()
        return events

    def read(self, proc: ESProcess) -> list[RangeEvent]:
        events = []
        for line in proc.read_lines():
            if line.strip() == es.READY:
                if proc.state in ("starting", "busy"):
                    proc.state = "ready"
                continue
            report = es.parse_report(line)
            if report is None:
                proc.out.write(line + "\n")
                continue
            events += self.reported(proc, report)
        proc.out.flush()
        return events

    def reported(self, proc: ESProcess, report: es.Report) -> list[RangeEvent]:
        r = proc.inflight.pop(report.range_id, None)
        if r is None:
            logger.warning("rank %d: payload reported range %s it was not given", self.ex.rank, report.range_id)
            return []
        now = time.monotonic()
        elapsed, proc.started_at = now - proc.started_at, now
        wall = report.wall_s if report.wall_s is not None else elapsed
        job_id = r.job_id
        self.n_reported[job_id] = self.n_reported.get(job_id, 0) + 1
        mean = self.mean_wall.get(job_id)
        self.mean_wall[job_id] = wall if mean is None else 0.9 * mean + 0.1 * wall
        if not report.ok:
            return [self.event(r, "failed", error_code=report.code, error_diag=report.message[:4000],
                               wall_s=elapsed)]
        staged = self.stage(proc, r, report)
        return [staged] if staged is not None else []

    def stage(self, proc: ESProcess, r: RangeSpec, report: es.Report) -> RangeEvent | None:
        """Move a finished range's output into the output area: a rename, or a copy by the thread."""
        name = report.output
        workdir = proc.dir
        size = None
        if "/" not in name and name not in ("", ".", ".."):
            src = f"{workdir}/{name}"  # one component in the payload's own directory: no link to follow
            try:
                st = os.lstat(src)
                found, inside, size = True, stat.S_ISREG(st.st_mode), st.st_size
            except OSError:
                found = inside = False
        else:
            src = os.path.realpath(name if os.path.isabs(name) else os.path.join(workdir, name))
            found = os.path.exists(src)
            inside = Path(src).is_relative_to(os.path.realpath(workdir)) and os.path.isfile(src)
        if not inside:
            why = "is outside the payload's directory" if found else "does not exist"
            return self.event(r, "failed", error_code=int(ErrorCode.OUTPUT_MISSING),
                              error_diag=f"range output {name[:1000]} {why}")
        dest = proc.area  # named in the diagnostic if its directory cannot be made
        try:
            dest = f"{self.output_dir(proc.area)}/{r.range_id}{es.extension(name)}"
            os.rename(src, dest)
        except OSError as exc:
            if exc.errno == errno.EXDEV:  # another filesystem (only rename says so): copy, off the loop
                self.stage_out.submit(self.event(r, "finished", cpu_s=report.cpu_s, wall_s=report.wall_s),
                                      Path(src), Path(dest))
                return None
            return self.event(r, "failed", cpu_s=report.cpu_s, wall_s=report.wall_s,
                              error_code=int(ErrorCode.STAGEOUT_FAILED),
                              error_diag=f"stage-out of {src} to {dest} failed: {exc}"[:4000])
        return self.event(r, "finished", cpu_s=report.cpu_s, wall_s=report.wall_s, output=dest,
                          size=size if size is not None else os.stat(dest).st_size)

    def output_dir(self, area: str) -> str:
        """The directory of the job's output area this rank moves its next finished range's output into:
        a new one (``<host>-<pid>-<n>``) every OUTPUTS_PER_DIR outputs. Range ids are unique in a job,
        so two ranks that chose the same name (the host's name is cut) would still not collide."""
        here = self._dirs.get(area)
        if here is None or here[1] >= OUTPUTS_PER_DIR:
            self._n_dirs += 1
            path = f"{area}/{self.ex.host[:64]}-{os.getpid()}-{self._n_dirs}"
            os.makedirs(path, exist_ok=True)
            here = self._dirs[area] = [path, 0]
        here[1] += 1
        return here[0]

    def batch_size(self, job_id: int) -> int:
        """Ranges to send in one list: one until a few are reported, then about BATCH_WINDOW_S of work."""
        mean = self.mean_wall.get(job_id)
        if mean is None or self.n_reported.get(job_id, 0) < 4:
            return 1
        return max(1, min(MAX_BATCH, int(BATCH_WINDOW_S / max(mean, 1e-6))))

    def feed(self) -> list[RangeEvent]:
        events = []
        for proc in self.procs.values():
            if proc.state != "ready" or proc.stop_reason:
                continue
            q = self.queues.get(proc.spec.job_id)
            if q:
                batch = [q.popleft() for _ in range(min(len(q), self.batch_size(proc.spec.job_id)))]
                line = json.dumps([es.panda_range(r.range_id, r.first_event, r.last_event, r.lfn, r.guid, r.scope)
                                   for r in batch])
                if proc.send(line):
                    proc.state, proc.started_at = "busy", time.monotonic()
                    for r in batch:
                        proc.inflight[r.range_id] = r
                    # the first of the list runs now; the others wait in the payload's pipe (still
                    # "assigned" to this worker) and are reported when they end
                    events.append(self.event(batch[0], "running"))
                else:
                    q.extendleft(reversed(batch))
            elif proc.spec.job_id in self.exhausted or self.cores_wanted_elsewhere(proc.spec.job_id):
                proc.send(es.NO_MORE)
                proc.state = "closing"
        return events

    def cores_wanted_elsewhere(self, job_id: int) -> bool:
        return bool(self.ex.queue) or any(q for j, q in self.queues.items() if j != job_id)

    def start_needed(self) -> None:
        for job_id, q in self.queues.items():
            if not q:
                continue
            spec = self.jobs[job_id]
            waiting = sum(1 for p in self.procs.values() if p.spec.job_id == job_id and p.state in ("starting", "ready"))
            while len(q) > waiting and spec.cores <= self.ex.free_cores and spec.memory_mb <= self.ex.free_memory_mb:
                if not self.launch(spec):
                    break
                waiting += 1

    def launch(self, spec: JobSpec) -> bool:
        self._n += 1
        workdir = Path(spec.workdir) / f"rank{self.ex.rank}-{os.getpid()}-{self._n}"
        env = {**self.ex.base_env, **spec.env, "HPC_EDGE_JOB_ID": str(spec.job_id),
               "HPC_EDGE_TASK_ID": str(spec.task_id), "HPC_EDGE_RANK": str(self.ex.rank),
               "HPC_EDGE_CORES": str(spec.cores), "OMP_NUM_THREADS": str(spec.cores), "PYTHONUNBUFFERED": "1"}
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            out = open(workdir / "payload.stdout", "w")
            with open(workdir / "payload.stderr", "wb") as err:
                proc = subprocess.Popen(payload_argv(spec.command), cwd=workdir, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        except OSError as exc:
            logger.error("rank %d: event-service payload of job %d could not start: %s", self.ex.rank, spec.job_id, exc)
            return False
        self.procs[proc.pid] = ESProcess(spec, workdir, proc, out)
        if self.ex.watchdog:
            self.ex.watchdog.started(proc.pid)
        self.ex.free_cores -= spec.cores
        self.ex.free_memory_mb -= spec.memory_mb
        return True

    def ended(self, pid: int, code: int) -> list[RangeEvent]:
        """A payload process exited (reaped by the executor): account for the range it held."""
        proc = self.procs.pop(pid)
        proc.proc.returncode = code
        if self.ex.watchdog:
            self.ex.watchdog.ended(pid)
        events = self.read(proc)
        proc.out.close()
        self.ex.free_cores += proc.spec.cores
        self.ex.free_memory_mb += proc.spec.memory_mb
        if proc.inflight:
            # the first range not reported was in flight: it fails (or is preempted); the rest of the
            # list was never started and goes back to the queue for a new process, without an attempt
            r, *rest = proc.inflight.values()
            if rest and not proc.stop_reason:
                self.queues.setdefault(r.job_id, deque()).extendleft(reversed(rest))
                rest = []
            wall = time.monotonic() - proc.started_at
            exit_code, sig = (code, None) if code >= 0 else (None, -code)
            if proc.stop_reason:
                events += [self.event(x, "preempted", exit_code=exit_code, signal=sig,
                                      error_code=int(proc.stop_reason[0]), error_diag=proc.stop_reason[1])
                           for x in (r, *rest)]
            else:
                how = f"signal {sig}" if sig else f"exit code {exit_code}"
                events.append(self.event(r, "failed", exit_code=exit_code, signal=sig, wall_s=wall,
                                         error_code=int(ErrorCode.KILLED_BY_SIGNAL if sig else ErrorCode.NONZERO_EXIT),
                                         error_diag=f"payload died during the range ({how})"))
        return events

    # ---- stopping -----------------------------------------------------------------------------
    def kill_all(self, reason: ErrorCode, diag: str) -> list[RangeEvent]:
        """Queued ranges go back at once. A payload with ranges in flight gets SIGTERM (the range it is
        on follows, preempted); one with none is told "No more events", as at its job's end, and gets
        SIGTERM only if it has not ended CLOSE_GRACE_S later: a drained worker's idle payloads end
        by themselves, not killed half-way through their own clean-up."""
        events = [self.event(r, "preempted", error_code=int(reason), error_diag=diag)
                  for q in self.queues.values() for r in q]
        self.queues.clear()
        now = time.monotonic()
        for proc in self.procs.values():
            if proc.stop_reason is None:
                proc.stop_reason = (reason, diag)
                if proc.inflight:
                    proc.sigterm_at = now
                    _killpg(proc.proc.pid, signal.SIGTERM)
                    continue
                if proc.state != "closing":
                    proc.send(es.NO_MORE)
                    proc.state = "closing"
                proc.close_by = now + CLOSE_GRACE_S
        return events

    def escalate(self) -> None:
        now = time.monotonic()
        for proc in self.procs.values():
            if proc.sigterm_at is None and proc.close_by is not None and now > proc.close_by:
                proc.sigterm_at = now
                _killpg(proc.proc.pid, signal.SIGTERM)
            elif proc.sigterm_at is not None and now - proc.sigterm_at > 5.0:
                _killpg(proc.proc.pid, signal.SIGKILL)

    def hard_kill_all(self) -> None:
        for pid in list(self.procs):
            _killpg(pid, signal.SIGKILL)

    def event(self, r: RangeSpec, state: str, **kw) -> RangeEvent:
        # built here from checked values (texts from the payload are cut to the wire's limits); the
        # tower validates every event it receives
        return RangeEvent(range_id=r.range_id, job_id=r.job_id, state=state, t=time.time(),
                          rank=self.ex.rank, host=self.ex.host, **kw)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
