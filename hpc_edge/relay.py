"""Rank 0 of an MPI job: the relay between the control tower (one ZeroMQ DEALER) and the ranks (MPI).

The relay prefetches work so ranks never wait a round trip, batches state changes into numbered
updates that it keeps until the tower acknowledges them, and runs payloads on its own cores too.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import zmq

from . import protocol as p
from .errors import ErrorCode, ProtocolError
from .executor import Executor
from .links import FileLink, ZmqLink
from .outbox import Outbox
from .rank import (OUT, relay_recv_events, relay_send_exhausted, relay_send_kill, relay_send_ranges, relay_send_stop,
                   relay_send_work)

logger = logging.getLogger(__name__)

# while rank 0's own short payloads keep waking the loop, its duties run at most this often (every rank
# holds bind_horizon_s of work, 50 ms by default). 20,000 /bin/true jobs on 2 ranks, 4 interleaved pairs
# here (bench/cpu_split.py): 2 ms cost the ranks 173.0-185.5 us of CPU per job, 5 ms 153.5-174.0; 10 ms
# left cores idle (3 rounds: 1,998-2,066 jobs/s, against 2,227-2,339 with 5 ms)
PASS_S = 0.005
RANGE_CHUNK = 16  # ranges per core handed to a rank at a time (distribute_ranges)


@dataclass
class RelayConfig:
    tower: str | None
    worker_id: str
    batch_id: str | None = None
    ends_at: float | None = None
    walltime_grace_s: float = 60.0
    heartbeat_s: float = 10.0
    resend_s: float = 30.0
    flush_s: float = 0.02
    flush_max: int = 512
    prefetch_horizon_s: float = 0.5  # keep enough work at hand to cover this long
    bind_horizon_s: float = 0.05  # and enough queued at each rank to cover this long
    max_prefetch: int = 64
    stop_timeout_s: float = 30.0
    # no tower answered this long after the start: stop (the tower cancels such a worker after its
    # queue's start_timeout_s, if it is there to; if it is gone, nothing else would end it)
    start_timeout_s: float | None = 600.0
    curve: tuple[bytes, bytes, bytes] | None = None  # (client public, client secret, server public)
    outbox_memory_bytes: int = 64 * 2**20
    spool_dir: Path | None = None
    messenger_dir: Path | None = None  # files on a shared filesystem instead of ZeroMQ


class Relay:
    def __init__(self, comm, executor: Executor, ranks: list[p.RankInfo], config: RelayConfig, ctx=None):
        self.comm, self.local, self.ranks, self.cfg = comm, executor, ranks, config
        if config.messenger_dir is not None:
            self.link = FileLink(config.messenger_dir)
        else:
            self.link = ZmqLink(config.tower, config.worker_id, config.curve, ctx)
        self.buffer: deque[p.JobSpec] = deque()
        self.rank_load = [0] * len(ranks)           # cores of work held by each rank
        self.held: dict[int, tuple[int, int]] = {}  # job id -> (rank, cores)
        self.range_buffer: deque[p.RangeSpec] = deque()
        self.es_jobs: dict[int, p.JobSpec] = {}
        self.es_sent: set[tuple[int, int]] = set()       # (rank, job id) whose spec the rank has
        self.rank_ranges = [0] * len(ranks)              # ranges held by each rank
        self.held_ranges: dict[str, int] = {}            # range id -> rank
        self.exhausted: set[int] = set()                 # jobs the tower has no range left of
        self.exhausted_told: set[int] = set()
        self.mean_range_wall: float | None = None  # learnt from finished ranges
        self.ranges_ready = True  # ask for ranges (and jobs) until the tower says it has none
        self.jobs_ready = True
        self.lost_after_s: float | None = None
        self.last_heard = time.monotonic()
        self.pending: list = []
        self.pending_since = 0.0
        self.unacked = Outbox(config.outbox_memory_bytes, config.spool_dir)
        self.void_req = 0
        self.seq = 0
        self.req = 0
        self.req_out: float | None = None
        # the ranks' loads when their free cores were last named to the tower and it sent nothing for
        # them: not asked again until a job ends or starts
        self.holes_asked: tuple[int, ...] | None = None
        self.retry_at = 0.0
        self.last_sent = 0.0
        self.welcomed = False
        self.draining = False
        self.stop_reason: tuple[ErrorCode, str] | None = None
        self.stopped_ranks: set[int] = set()
        self.mean_wall: float | None = None  # learnt from finished jobs
        self._signals: list[int] = []
        self.payload_fds: set[int] = set()  # rank 0's event-service payloads' stdout, in the poller
        self._mpi_status = None
        self.next_pass = 0.0

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        from mpi4py import MPI

        self._mpi_status = MPI.Status()
        self.poller = zmq.Poller()
        self.link.start(self.poller)
        self.local.install_sigchld_wakeup()
        self.poller.register(self.local.wakeup_fd(), zmq.POLLIN)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        self.send_hello()

    def run(self) -> None:
        self.start()
        try:
            while not self.finished():
                # with rank 0's payloads queued and no pass due, step_local waits for them (until the
                # next pass), not the poll
                wait_local = self.local.waits_in_step and not self.pass_due()
                heard = self.poll_tower(wait=not wait_local)
                self.handle_signals()
                if heard or self.pass_due():
                    self.relay_pass()
                else:
                    self.step_local(wait=wait_local)
        finally:
            self.local.hard_kill_all()
            OUT.drain(2.0)  # ranks have stopped: what they were sent is theirs, or moot
            self.link.close()
            self.unacked.close()

    def relay_pass(self) -> None:
        """Everything a turn does: rank 0's own payloads, and the relay's duties to the ranks and the tower."""
        self.check_walltime()
        self.collect_rank_events()
        self.step_local()
        self.distribute_work()
        self.distribute_ranges()
        self.request_work()
        self.flush_updates()
        self.keep_alive()
        self.check_drained()
        self.next_pass = time.monotonic() + PASS_S

    def pass_due(self) -> bool:
        """Whether this turn also does the relay's duties, not only rank 0's payloads. A short payload of
        rank 0 ending wakes the loop about once per millisecond; every rank holds ``bind_horizon_s`` of
        jobs, so the duties wait up to PASS_S then, unless rank 0 has nothing queued, event ranges are in
        play (their hand-overs are the event service's pace) or the relay is stopping."""
        return (time.monotonic() >= self.next_pass or not self.local.queue or self.stop_reason is not None
                or bool(self.held_ranges or self.range_buffer))

    def finished(self) -> bool:
        return len(self.stopped_ranks) == len(self.ranks) and not self.pending and (
            not self.unacked or time.monotonic() > self._stop_deadline)

    # ---- tower side ---------------------------------------------------------------------------
    def send(self, message) -> None:
        self.link.send(p.encode(message))
        self.last_sent = time.monotonic()

    def send_hello(self) -> None:
        """Say who we are and what we hold (or have reported without an ack yet).

        Work answering any request made before this hello is void: if it still arrives, it is
        dropped, and the tower returns those jobs to the pool."""
        self.void_req = self.req
        self.req_out = None
        holding = set(self.held) | {s.job_id for s in self.buffer} | self.unacked.known_jobs()
        ranges = set(self.held_ranges) | {r.range_id for r in self.range_buffer} | self.unacked.known_ranges()
        self.send(p.Hello(worker_id=self.cfg.worker_id, batch_id=self.cfg.batch_id, ranks=self.ranks,
                          ends_at=self.cfg.ends_at, holding=sorted(holding), holding_ranges=sorted(ranges),
                          last_seq=self.seq, last_req=self.req))

    def poll_tower(self, wait: bool = True) -> bool:
        """Wait for the tower, rank 0's payloads or the timeout (or, with ``wait`` False, only look);
        handle what the tower sent. True if anything came from the tower."""
        busy = self.pending or self.buffer or self.held or self.held_ranges or self.range_buffer
        self.watch_payloads()
        events = dict(self.poller.poll(0 if not wait else 2 if busy else 10))
        if self.local.wakeup_fd() in events:
            self.local.drain_wakeups()
        heard = False
        if self.link.reconnected(events):
            # a tower restart or a network cut: say hello again, then what is unacked goes again
            logger.warning("relay %s: reconnected to the tower; saying hello again", self.cfg.worker_id)
            self.welcomed = False
            self.send_hello()
            heard = True
        for data in self.link.receive(events):
            heard = True
            self.last_heard = time.monotonic()
            try:
                message = p.decode(data)
            except ProtocolError as exc:
                logger.error("relay %s: dropped a malformed message from the tower: %s", self.cfg.worker_id, exc)
                continue
            getattr(self, f"handle_{message.kind}", self.handle_unexpected)(message)
        return heard

    def watch_payloads(self) -> None:
        """Wake on this rank's event-service payloads' pipes too: one asking for ranges is fed at once,
        not after the poll's timeout (a list of short ranges takes about as long as that timeout)."""
        fds = set(self.local.es.fds())
        if fds != self.payload_fds:
            for fd in self.payload_fds - fds:
                self.poller.unregister(fd)
            for fd in fds - self.payload_fds:
                self.poller.register(fd, zmq.POLLIN)
            self.payload_fds = fds

    def handle_welcome(self, m: p.Welcome) -> None:
        self.welcomed = True
        self.cfg.heartbeat_s = m.heartbeat_s
        self.lost_after_s = m.lost_after_s
        self.unacked.ack_upto(m.last_seq)
        now = time.monotonic()
        for seq in sorted(self.unacked.items):  # the tower restarted or lost them: send again
            self.link.send(self.unacked.data(seq))
            self.unacked.mark_sent(seq, now)
        if m.release:
            logger.warning("relay %s: the tower gave jobs %s to others; dropping them", self.cfg.worker_id, m.release)
            self.kill_jobs(set(m.release), ErrorCode.WORKER_STOPPED, "released by the tower")
        logger.info("relay %s: welcomed by the tower", self.cfg.worker_id)

    def handle_work(self, m: p.Work) -> None:
        if m.req <= self.void_req:
            logger.info("relay %s: dropped work answering void request %d", self.cfg.worker_id, m.req)
            return
        self.req_out = None
        if m.jobs:
            self.holes_asked = None  # what is still free after these is worth naming once more
        self.buffer.extend(m.jobs)
        for spec in m.es_jobs:
            self.es_jobs[spec.job_id] = spec
        self.range_buffer.extend(m.ranges)
        fresh = {r.job_id for r in m.ranges}
        self.exhausted -= fresh
        self.exhausted_told -= fresh
        self.exhausted.update(m.exhausted)
        self.ranges_ready, self.jobs_ready = m.ranges_ready, m.jobs_ready

    def handle_no_work(self, m: p.NoWork) -> None:
        if m.req <= self.void_req:
            return
        self.req_out = None
        self.exhausted.update(m.exhausted)
        self.ranges_ready, self.jobs_ready = m.ranges_ready, m.jobs_ready
        if not (m.ranges_ready or m.jobs_ready):  # nothing at all: ask again later
            self.retry_at = time.monotonic() + m.retry_s
        if m.drain and not self.draining:
            logger.info("relay %s: the tower has no more work; draining", self.cfg.worker_id)
            self.draining = True

    def handle_ack(self, m: p.Ack) -> None:
        self.unacked.ack(m.seq)
        for command in m.commands:
            if command.action == "kill":
                self.kill_jobs(set(command.job_ids), ErrorCode.KILLED_BY_USER, command.reason or "killed by user")
            elif command.action == "drain":
                self.draining = True
            elif command.action == "stop":
                self.stop(ErrorCode.WORKER_STOPPED, command.reason or "stopped by the tower")

    def handle_reject(self, m: p.Reject) -> None:
        logger.error("relay %s: the tower rejected a message: %s", self.cfg.worker_id, m.error)

    def handle_unexpected(self, m) -> None:
        logger.error("relay %s: unexpected %s message from the tower", self.cfg.worker_id, m.kind)

    def request_work(self) -> None:
        if self.draining or self.stop_reason or self.req_out is not None or not self.welcomed:
            return
        now = time.monotonic()
        if now < self.retry_at:
            return
        depth = self.job_depth()
        target, target_ranges = self.target_cores(depth), self.target_ranges()
        want = target - sum(self.rank_load) - sum(s.cores for s in self.buffer)
        want_ranges = target_ranges - len(self.held_ranges) - len(self.range_buffer)
        # Short jobs: ask in chunks (a quarter of the target) rather than a job at a time: fewer round
        # trips and tower commits. Long jobs (no prefetch): name each rank's free cores that the buffer
        # cannot fill, so the tower backfills them with jobs that fit; ask again only when they change.
        # Ask only for what the tower said it has; when it had nothing, probe after its retry delay.
        probing = not (self.jobs_ready or self.ranges_ready)
        holes = self.holes() if self.bind_depth() == 0 else []
        extra = want - sum(holes)
        jobs_due = (self.jobs_ready or probing) and (
            extra >= max(1, target // 4) or (bool(holes) and tuple(self.rank_load) != self.holes_asked))
        ranges_due = (self.ranges_ready or probing) and want_ranges >= max(1, target_ranges // 4)
        if not (jobs_due or ranges_due):
            return
        if probing:
            # news first: the tower answers the probe knowing what just ended (and may say drain)
            self.flush_updates(force=True)
        self.req += 1
        remaining = None if self.cfg.ends_at is None else self.cfg.ends_at - time.time()
        if not jobs_due:
            holes = []
        self.holes_asked = tuple(self.rank_load) if holes else None
        cores = sum(holes) + max(0, extra)
        self.send(p.Request(req=self.req, cores=cores, max_job_cores=max(r.cores for r in self.ranks),
                            max_job_memory_mb=max(r.memory_mb for r in self.ranks), remaining_s=remaining,
                            ranges=max(want_ranges, 0), holes=holes))
        self.req_out = now

    def target_cores(self, depth: int) -> int:
        """Cores of work to hold: running plus enough queued to cover the prefetch horizon."""
        return sum(r.cores for r in self.ranks) * (1 + depth)

    def holes(self) -> list[int]:
        """Free cores of each rank with any (the buffer has been placed: what is left does not fit them)."""
        return [info.cores - load for info, load in zip(self.ranks, self.rank_load) if load < info.cores]

    def job_depth(self) -> int:
        """Extra rounds of jobs held per core (at the relay or the ranks): none for long jobs, many for
        short ones, so no core waits for a round trip to the tower."""
        return prefetch_depth(self.mean_wall, self.cfg.prefetch_horizon_s, self.cfg.max_prefetch)

    def bind_depth(self) -> int:
        """Extra rounds of jobs queued at each rank, so it does not wait for the relay: only for very
        short jobs. Longer ones stay at the relay until a rank has the cores to start them (late
        binding): the first rank to free up gets the next job, and narrow jobs fill what wide ones leave."""
        return prefetch_depth(self.mean_wall, self.cfg.bind_horizon_s, self.cfg.max_prefetch)

    def range_depth(self) -> int:
        """Ranges per core a rank holds: enough to cover the horizon, few when ranges are long."""
        return max(1, prefetch_depth(self.mean_range_wall, self.cfg.prefetch_horizon_s, 1024))

    def target_ranges(self) -> int:
        return sum(r.cores for r in self.ranks) * (1 + self.range_depth())

    def flush_updates(self, force: bool = False) -> None:
        if not self.pending:
            return
        if not force and len(self.pending) < self.cfg.flush_max and \
                time.monotonic() - self.pending_since < self.cfg.flush_s:
            return
        pending, self.pending = self.pending, []
        pending = p.drop_superseded(pending)
        jobs = [e for e in pending if type(e) is p.JobEvent]
        ranges = [e for e in pending if type(e) is p.RangeEvent]
        self.seq += 1
        # built from records this relay holds (the ranks' reports are checked where they are made;
        # the tower validates what it receives): not validated again here, tuple by tuple
        data = p.encode(p.Update.model_construct(seq=self.seq, events=jobs, ranges=ranges))
        self.unacked.add(self.seq, data, time.monotonic(), (e.job_id for e in jobs), (r.range_id for r in ranges))
        self.link.send(data)
        self.last_sent = time.monotonic()

    def keep_alive(self) -> None:
        now = time.monotonic()
        for seq in self.unacked.due(now, self.cfg.resend_s):
            self.unacked.mark_sent(seq, now)
            self.link.send(self.unacked.data(seq))
        if self.req_out is not None and now - self.req_out > self.cfg.resend_s:
            # the request or its answer was lost: a new hello voids it, and the tower takes back
            # whatever it had sent in answer
            self.send_hello()
        # once welcomed, the tower's lost_after_s: by then it has given this worker up and handed its
        # work to others, and running on would only do it twice; before, the start timeout
        welcomed_once = self.lost_after_s is not None
        silence = now - self.last_heard
        limit = self.lost_after_s if welcomed_once else self.cfg.start_timeout_s
        if limit and silence > limit and not self.stop_reason:
            self.stop(ErrorCode.LOST_WORKER, f"no word from the tower for {silence:.0f} s" if welcomed_once
                      else f"no tower answered in the {silence:.0f} s since the start")
            self._stop_deadline = now
        if now - self.last_sent > self.cfg.heartbeat_s:
            if self.welcomed:
                self.send(p.Heartbeat(running=len(self.held), last_seq=self.seq))
            else:
                self.send_hello()

    # ---- rank side ----------------------------------------------------------------------------
    def collect_rank_events(self) -> None:
        if len(self.ranks) == 1:
            return
        for source, kind, events in relay_recv_events(self.comm, self._mpi_status):
            if kind == "stopped":
                self.stopped_ranks.add(source)
            self.record(events)

    def step_local(self, wait: bool = False) -> None:
        self.record(self.local.step(max(0.0, self.next_pass - time.monotonic()) if wait else 0.0))
        if self.stop_reason and not self.local.busy and 0 not in self.stopped_ranks:
            self.stopped_ranks.add(0)

    def record(self, events: list[p.JobEvent]) -> None:
        if not events:
            return
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.extend(events)
        for e in events:
            if isinstance(e, p.RangeEvent):
                if e.state != "running":
                    rank = self.held_ranges.pop(e.range_id, None)
                    if rank is not None:
                        self.rank_ranges[rank] -= 1
                    if e.wall_s is not None:
                        self.mean_range_wall = running_mean(self.mean_range_wall, e.wall_s)
                continue
            if e.state != "running":
                rank, cores = self.held.pop(e.job_id, (None, 0))
                if rank is not None:
                    self.rank_load[rank] -= cores
                if e.wall_s is not None:
                    self.mean_wall = running_mean(self.mean_wall, e.wall_s)
        if not (self.held or self.buffer or self.held_ranges or self.range_buffer):
            self.retry_at = 0.0  # idle now: ask at once (more work, or word to drain), not after retry_s

    def distribute_work(self) -> None:
        if not self.buffer or self.stop_reason:
            return
        depth = self.bind_depth()
        room = self._room(depth)
        batches: dict[int, list[p.JobSpec]] = {}
        kept: deque[p.JobSpec] = deque()
        buffer = self.buffer
        while buffer and room > 0:  # in order; a job that fits no rank now keeps its place
            spec = buffer.popleft()
            rank = self.pick_rank(spec, depth) if spec.cores <= room else None
            if rank is None:
                kept.append(spec)
                continue
            batches.setdefault(rank, []).append(spec)
            self.held[spec.job_id] = (rank, spec.cores)
            self.rank_load[rank] += spec.cores
            room = self._room(depth)
        kept.extend(buffer)
        self.buffer = kept
        for rank, specs in batches.items():
            if rank == 0:
                self.local.add(specs)
            else:
                relay_send_work(self.comm, rank, specs)

    def _room(self, depth: int) -> int:
        """The most cores of jobs any rank may still be given (its cores, and ``depth`` rounds more)."""
        return max(info.cores * (1 + depth) - load for info, load in zip(self.ranks, self.rank_load))

    def distribute_ranges(self) -> None:
        """Hand ranges to the ranks with the fewest per core, each up to its adaptive depth."""
        if self.stop_reason:
            return
        if self.range_buffer:
            depth = self.range_depth()
            batches: dict[int, list[p.RangeSpec]] = {}
            buffer = self.range_buffer
            while buffer:
                rank = min(self.ranks, key=lambda i: self.rank_ranges[i.rank] / i.cores)
                room = rank.cores * depth - self.rank_ranges[rank.rank]
                if room <= 0:
                    break
                # a few per core at a time to the least loaded rank: even to within RANGE_CHUNK per core,
                # without choosing a rank for each range
                got = [buffer.popleft() for _ in range(min(room, len(buffer), RANGE_CHUNK * rank.cores))]
                batches.setdefault(rank.rank, []).extend(got)
                self.held_ranges.update(dict.fromkeys([r.range_id for r in got], rank.rank))
                self.rank_ranges[rank.rank] += len(got)
            for rank, ranges in batches.items():
                specs = [self.es_jobs[j] for j in {r.job_id for r in ranges} if (rank, j) not in self.es_sent]
                self.es_sent.update((rank, s.job_id) for s in specs)
                if rank == 0:
                    self.local.es.add(specs, ranges)
                else:
                    relay_send_ranges(self.comm, rank, specs, ranges)
        buffered = {r.job_id for r in self.range_buffer}
        tell = sorted(self.exhausted - self.exhausted_told - buffered)
        if tell:
            self.exhausted_told.update(tell)
            self.local.es.mark_exhausted(tell)
            for info in self.ranks[1:]:
                relay_send_exhausted(self.comm, info.rank, tell)

    def pick_rank(self, spec: p.JobSpec, depth: int) -> int | None:
        """With prefetch (short jobs), the least loaded rank with room in its queue; without (long jobs
        are bound to a rank only when they can start there), the best fit: the rank with the fewest
        free cores that still hold the job, keeping wide holes for wide jobs."""
        best, best_key = None, None
        for info in self.ranks:
            if info.cores < spec.cores or info.memory_mb < spec.memory_mb:
                continue
            load = self.rank_load[info.rank]
            if load + spec.cores > info.cores * (1 + depth) and load > 0:
                continue
            key = load / info.cores if depth else info.cores - load
            if best_key is None or key < best_key:
                best, best_key = info.rank, key
        return best

    def kill_jobs(self, job_ids: set[int], reason: ErrorCode, diag: str) -> None:
        now = time.time()
        dropped = [s for s in self.buffer if s.job_id in job_ids]
        self.buffer = deque(s for s in self.buffer if s.job_id not in job_ids)
        self.record([p.JobEvent(job_id=s.job_id, dispatch=s.dispatch, state="cancelled" if reason is
                                ErrorCode.KILLED_BY_USER else "preempted", t=now, error_code=reason,
                                error_diag=diag) for s in dropped])
        by_rank: dict[int, list[int]] = {}
        for job_id in job_ids:
            if job_id in self.held:
                by_rank.setdefault(self.held[job_id][0], []).append(job_id)
        for rank, ids in by_rank.items():
            if rank == 0:
                self.record(self.local.kill(set(ids), reason, diag))
            else:
                relay_send_kill(self.comm, rank, ids, reason, diag)

    # ---- ending -------------------------------------------------------------------------------
    def stop(self, reason: ErrorCode, diag: str) -> None:
        """End the worker: every job it holds goes back to the tower as preempted/cancelled."""
        if self.stop_reason:
            return
        logger.info("relay %s: stopping: %s", self.cfg.worker_id, diag)
        self.stop_reason = (reason, diag)
        self.draining = True
        self._stop_deadline = time.monotonic() + self.cfg.stop_timeout_s
        self.kill_jobs({s.job_id for s in self.buffer}, reason, diag)
        now = time.time()
        self.record([p.RangeEvent(range_id=r.range_id, job_id=r.job_id, state="preempted", t=now,
                                  error_code=int(reason), error_diag=diag) for r in self.range_buffer])
        self.range_buffer.clear()
        self.record(self.local.kill_all(reason, diag))
        for info in self.ranks[1:]:
            relay_send_stop(self.comm, info.rank, reason, diag)

    def check_drained(self) -> None:
        if self.draining and not self.stop_reason and not self.buffer and not self.held \
                and not self.range_buffer and not self.held_ranges \
                and not self.pending and not self.unacked and self.req_out is None:
            self.stop(ErrorCode.WORKER_STOPPED, "drained: no more work")
        if self.stop_reason and len(self.stopped_ranks) == len(self.ranks):
            self.flush_updates(force=True)
            if not self.unacked or time.monotonic() > self._stop_deadline:
                self.send(p.Bye(reason=self.stop_reason[1]))

    def _on_signal(self, sig, _frame) -> None:
        self.local.term_signal_at = time.monotonic()
        self._signals.append(sig)

    def handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop()
            if sig == signal.SIGUSR1:
                self.stop(ErrorCode.WALLTIME_PREEMPTED, "walltime warning signal (SIGUSR1) received")
            else:
                self.stop(ErrorCode.WORKER_STOPPED, f"worker terminated ({signal.Signals(sig).name})")

    def check_walltime(self) -> None:
        if self.cfg.ends_at is not None and time.time() > self.cfg.ends_at - self.cfg.walltime_grace_s:
            self.stop(ErrorCode.WALLTIME_PREEMPTED, "allocation reaches its walltime")


def prefetch_depth(mean_wall: float | None, horizon_s: float, cap: int) -> int:
    """How many extra rounds of work to queue per core so none waits a round trip.

    Unknown lengths (nothing has finished yet) and jobs much longer than the horizon get none: a
    queued long job would sit on this worker while another one idles."""
    if mean_wall is None or mean_wall >= horizon_s:
        return 0
    return min(cap, math.ceil(horizon_s / mean_wall))


def running_mean(mean: float | None, value: float, weight: float = 0.2) -> float:
    value = max(value, 1e-4)
    return value if mean is None else (1 - weight) * mean + weight * value

