"""The MPI side between rank 0 (the relay) and the other ranks, and the loop of a non-zero rank.

Protocol functions come in mirrored pairs named for their role (``relay_send_work`` /
``rank_recv``). Messages inside one MPI job are plain Python tuples of validated records: the job is
one user's trust domain, and nothing here crosses the network to the tower.

Every send is non-blocking (``isend``): the relay and a rank may send each other large messages at
the same moment, and with blocking sends past MPI's eager limit both would wait for a receive that
never comes. Pending sends are tested each turn and waited for (within limits) at the end.
"""

from __future__ import annotations

import logging
import signal
import time

from .errors import ErrorCode
from .executor import Executor
from .protocol import JobEvent, JobSpec, RangeSpec, drop_superseded

logger = logging.getLogger(__name__)

TAG_TO_RANK = 11
TAG_TO_RELAY = 12
IDLE_WAIT_S = 0.005
BATCH_S = 0.01    # a rank reports to the relay at most this often ...
BATCH_MAX = 256   # ... unless this many events wait


class Outgoing:
    """This process's MPI sends still under way."""

    def __init__(self):
        self.pending: list = []

    def send(self, comm, message, dest: int, tag: int) -> None:
        self.pending.append(comm.isend(message, dest=dest, tag=tag))
        if len(self.pending) >= 32:
            self.progress()

    def progress(self) -> None:
        if self.pending:
            self.pending = [r for r in self.pending if not r.Test()]

    def drain(self, timeout_s: float) -> bool:
        """Wait for every pending send (the peers are still receiving); False if some never finished."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            self.progress()
            if self.pending:
                time.sleep(0.001)
        return not self.pending


OUT = Outgoing()


# ---- relay side -----------------------------------------------------------------------------
def relay_send_work(comm, rank: int, specs: list[JobSpec]) -> None:
    OUT.send(comm, ("work", specs), rank, TAG_TO_RANK)


def relay_send_ranges(comm, rank: int, jobs: list[JobSpec], ranges: list[RangeSpec]) -> None:
    OUT.send(comm, ("ranges", jobs, ranges), rank, TAG_TO_RANK)


def relay_send_exhausted(comm, rank: int, job_ids: list[int]) -> None:
    OUT.send(comm, ("exhausted", job_ids), rank, TAG_TO_RANK)


def relay_send_kill(comm, rank: int, job_ids: list[int], reason: ErrorCode, diag: str) -> None:
    OUT.send(comm, ("kill", job_ids, int(reason), diag), rank, TAG_TO_RANK)


def relay_send_stop(comm, rank: int, reason: ErrorCode, diag: str) -> None:
    OUT.send(comm, ("stop", int(reason), diag), rank, TAG_TO_RANK)


def relay_recv_events(comm, status) -> list[tuple[int, str, list[JobEvent]]]:
    """Everything ranks have sent: (rank, kind, events) with kind 'events' or 'stopped'."""
    OUT.progress()
    got = []
    while comm.iprobe(tag=TAG_TO_RELAY, status=status):
        source = status.Get_source()
        kind, events = comm.recv(source=source, tag=TAG_TO_RELAY)
        got.append((source, kind, events))
    return got


# ---- rank side ------------------------------------------------------------------------------
def rank_send_events(comm, events: list[JobEvent], kind: str = "events") -> None:
    OUT.send(comm, (kind, events), 0, TAG_TO_RELAY)


def rank_recv(comm) -> list[tuple]:
    OUT.progress()
    got = []
    while comm.iprobe(source=0, tag=TAG_TO_RANK):
        got.append(comm.recv(source=0, tag=TAG_TO_RANK))
    return got


def rank_loop(comm, executor: Executor) -> None:
    """Run what the relay sends until it says stop; report every state change back."""
    log = logging.LoggerAdapter(logger, {"rank": comm.Get_rank()})
    terminating = []

    def on_terminate(*_):
        executor.term_signal_at = time.monotonic()
        terminating.append(True)

    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGINT, on_terminate)
    # the walltime warning is the relay's to act on; here it only explains payloads it may kill
    signal.signal(signal.SIGUSR1, lambda *_: setattr(executor, "term_signal_at", time.monotonic()))
    executor.install_sigchld_wakeup()
    stopping = False
    outbox: list = []
    since = 0.0
    while True:
        events: list = []
        for message in rank_recv(comm):
            events += handle_relay_message(executor, message)
            stopping = stopping or message[0] == "stop"
        if terminating and not stopping:
            stopping = True
            events += executor.kill_all(ErrorCode.WORKER_STOPPED, "worker terminated (SIGTERM)")
        # with payloads queued the step itself waits for them (the compiled path), up to the time the
        # loop would sleep below
        events += executor.step(IDLE_WAIT_S)
        freed = any(type(e) is JobEvent and e.state != "running" for e in events)
        if events:
            if not outbox:
                since = time.monotonic()
            outbox += events
        # batch what goes to the relay: at most one message per BATCH_S, or sooner when it fills, or
        # at once when a job ended and left cores with nothing queued for them (the relay refills them)
        if outbox and (stopping or len(outbox) >= BATCH_MAX or time.monotonic() - since >= BATCH_S
                       or not executor.busy or (freed and not executor.queue and executor.free_cores > 0)):
            rank_send_events(comm, drop_superseded(outbox))
            outbox = []
        if stopping and not executor.busy:
            rank_send_events(comm, [], kind="stopped")
            if not OUT.drain(60.0):
                log.warning("rank stopping with %d reports the relay never received", len(OUT.pending))
            log.debug("rank stopped")
            return
        # with every core taken nothing can start before a payload ends (which wakes the wait at once)
        # or the relay writes (a kill, a stop: heard within IDLE_WAIT_S * 4): no second pass over an
        # unchanged state, and long payloads cost a rank 50 wake-ups a second, not 200
        saturated = executor.free_cores <= 0
        if (not events or saturated) and not executor.waited:
            executor.wait(IDLE_WAIT_S * 4 if saturated or executor.idle else IDLE_WAIT_S)


def handle_relay_message(executor: Executor, message: tuple) -> list:
    """Act on one message from the relay; return the events it causes at once."""
    kind = message[0]
    if kind == "work":
        executor.add(message[1])
    elif kind == "ranges":
        executor.es.add(message[1], message[2])
    elif kind == "exhausted":
        executor.es.mark_exhausted(message[1])
    elif kind == "kill":
        return executor.kill(set(message[1]), ErrorCode(message[2]), message[3])
    elif kind == "stop":
        return executor.kill_all(ErrorCode(message[1]), message[2])
    return []
