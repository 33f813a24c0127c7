"""The MPI side between rank 0 (the relay) and the other ranks, and the loop of a non-zero rank.

Protocol functions come in mirrored pairs named for their role (``relay_send_work`` /
``rank_recv``). Messages inside one MPI job are plain Python tuples of validated records: the job is
one user's trust domain, and nothing here crosses the network to the tower.
"""

from __future__ import annotations

import logging
import signal
import time

from .errors import ErrorCode
from .executor import Executor
from .protocol import JobEvent, JobSpec, RangeSpec

logger = logging.getLogger(__name__)

TAG_TO_RANK = 11
TAG_TO_RELAY = 12
IDLE_WAIT_S = 0.005
BATCH_S = 0.01    # a rank reports to the relay at most this often ...
BATCH_MAX = 256   # ... unless this many events wait


# ---- relay side -----------------------------------------------------------------------------
def relay_send_work(comm, rank: int, specs: list[JobSpec]) -> None:
    comm.send(("work", specs), dest=rank, tag=TAG_TO_RANK)


def relay_send_ranges(comm, rank: int, jobs: list[JobSpec], ranges: list[RangeSpec]) -> None:
    comm.send(("ranges", jobs, ranges), dest=rank, tag=TAG_TO_RANK)


def relay_send_exhausted(comm, rank: int, job_ids: list[int]) -> None:
    comm.send(("exhausted", job_ids), dest=rank, tag=TAG_TO_RANK)


def relay_send_kill(comm, rank: int, job_ids: list[int], reason: ErrorCode, diag: str) -> None:
    comm.send(("kill", job_ids, int(reason), diag), dest=rank, tag=TAG_TO_RANK)


def relay_send_stop(comm, rank: int, reason: ErrorCode, diag: str) -> None:
    comm.send(("stop", int(reason), diag), dest=rank, tag=TAG_TO_RANK)


def relay_recv_events(comm, status) -> list[tuple[int, str, list[JobEvent]]]:
    """Everything ranks have sent: (rank, kind, events) with kind 'events' or 'stopped'."""
    got = []
    while comm.iprobe(tag=TAG_TO_RELAY, status=status):
        source = status.Get_source()
        kind, events = comm.recv(source=source, tag=TAG_TO_RELAY)
        got.append((source, kind, events))
    return got


# ---- rank side ------------------------------------------------------------------------------
def rank_send_events(comm, events: list[JobEvent], kind: str = "events") -> None:
    comm.send((kind, events), dest=0, tag=TAG_TO_RELAY)


def rank_recv(comm) -> list[tuple]:
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
        events += executor.step()
        if events:
            if not outbox:
                since = time.monotonic()
            outbox += events
        # batch what goes to the relay: at most one message per BATCH_S, or sooner when it fills
        if outbox and (stopping or len(outbox) >= BATCH_MAX or time.monotonic() - since >= BATCH_S
                       or not executor.busy):
            rank_send_events(comm, outbox)
            outbox = []
        if stopping and not executor.busy:
            rank_send_events(comm, [], kind="stopped")
            log.debug("rank stopped")
            return
        if not events:
            executor.wait(IDLE_WAIT_S if not executor.idle else IDLE_WAIT_S * 4)


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
