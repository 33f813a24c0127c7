"""What wakes the relay's loop: besides the tower's socket and payload exits, the pipes of rank 0's own
event-service payloads, so one asking for ranges is fed at once, not after the poll's timeout; and
what no loop waits on: a payload's stdout at its end. And how the relay spreads event ranges over
its ranks."""

from __future__ import annotations

import os
import select
import subprocess
import time
from types import SimpleNamespace

import zmq

from hpc_edge.esrunner import ESProcess, EventRunner
from hpc_edge.protocol import JobSpec
from hpc_edge.relay import Relay


def test_rank_zeros_payload_pipes_wake_the_relay_while_they_run():
    pipes = [os.pipe(), os.pipe()]
    try:
        live: list[int] = [pipes[0][0]]
        relay = SimpleNamespace(poller=zmq.Poller(), payload_fds=set(),
                                local=SimpleNamespace(es=SimpleNamespace(fds=lambda: list(live))))

        Relay.watch_payloads(relay)
        os.write(pipes[0][1], b"Ready for events\n")
        assert dict(relay.poller.poll(0)) == {pipes[0][0]: zmq.POLLIN}

        live[:] = [pipes[1][0]]  # the first payload ended, another started
        Relay.watch_payloads(relay)
        assert dict(relay.poller.poll(0)) == {}  # the old pipe no longer wakes it
        os.write(pipes[1][1], b"Ready for events\n")
        assert dict(relay.poller.poll(0)) == {pipes[1][0]: zmq.POLLIN}
        assert relay.payload_fds == {pipes[1][0]}
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_a_payload_that_closed_its_stdout_and_runs_on_is_not_waited_on(tmp_path):
    """Its pipe would be readable (at its end) on every wait: the loop would never sleep again."""
    proc = subprocess.Popen(["sh", "-c", "echo 'Ready for events'; exec >&-; exec sleep 60"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        spec = JobSpec(job_id=1, task_id=1, attempt=1, dispatch=1, command="sim", cores=1, memory_mb=0,
                       walltime_s=60, workdir=str(tmp_path), event_service=True)
        runner = EventRunner(executor=None)
        runner.procs[proc.pid] = es = ESProcess(spec, tmp_path, proc, open(tmp_path / "payload.stdout", "w"))
        assert runner.fds() == [es.fd]
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not es.eof and time.monotonic() < deadline:
            select.select(runner.fds(), [], [], 1.0)
            lines += es.read_lines()

        assert lines == ["Ready for events"] and es.eof
        assert proc.poll() is None  # still running
        assert runner.fds() == []
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def test_rank_zeros_own_payload_ends_leave_the_relays_duties_for_a_moment_only():
    """Short payloads of rank 0 wake the loop about once per millisecond: those turns only step them,
    unless the duties are due (PASS_S), rank 0 has nothing queued, event ranges are in play or the
    relay is stopping. A message from the tower always makes a full turn (see Relay.run)."""
    spec = JobSpec(job_id=1, task_id=1, attempt=1, dispatch=1, command="true", cores=1, memory_mb=0,
                   walltime_s=60, workdir="/tmp/x")
    relay = SimpleNamespace(next_pass=time.monotonic() + 60, local=SimpleNamespace(queue=[spec]),
                            stop_reason=None, held_ranges={}, range_buffer=[])
    assert not Relay.pass_due(relay)
    for change, value in [("local", SimpleNamespace(queue=[])), ("stop_reason", (1, "stop")),
                          ("held_ranges", {"1-0": 1}), ("range_buffer", [object()]),
                          ("next_pass", time.monotonic() - 0.001)]:
        changed = SimpleNamespace(**{**vars(relay), change: value})
        assert Relay.pass_due(changed), change


def test_ranges_go_to_the_least_loaded_ranks_per_core_up_to_their_depth(monkeypatch):
    """distribute_ranges: ranks of 1, 2 and 1 cores, 40 ranges per core at most; each range goes to
    one rank once, rank 0's to its own executor and the others' over MPI with their job's spec (once
    per rank), loads per core even to within RANGE_CHUNK, and what does not fit stays buffered."""
    from collections import deque

    from hpc_edge import relay as relay_mod
    from hpc_edge.protocol import RangeSpec

    sent: list[tuple[int, list, list]] = []
    monkeypatch.setattr(relay_mod, "relay_send_ranges", lambda comm, rank, specs, ranges: sent.append(
        (rank, [s.job_id for s in specs], [r.range_id for r in ranges])))
    monkeypatch.setattr(relay_mod, "relay_send_exhausted", lambda *a: None)
    local: list[tuple[list, list]] = []
    spec = JobSpec(job_id=4, task_id=1, attempt=1, dispatch=1, command="sim", cores=1, memory_mb=0,
                   walltime_s=60, workdir="/tmp/x", event_service=True)
    relay = SimpleNamespace(
        stop_reason=None, range_depth=lambda: 40, rank_ranges=[0, 0, 0], held_ranges={}, es_jobs={4: spec},
        es_sent=set(), exhausted=set(), exhausted_told=set(), comm=None,
        ranks=[SimpleNamespace(rank=0, cores=1), SimpleNamespace(rank=1, cores=2), SimpleNamespace(rank=2, cores=1)],
        local=SimpleNamespace(es=SimpleNamespace(add=lambda specs, ranges: local.append(
            ([s.job_id for s in specs], [r.range_id for r in ranges])), mark_exhausted=lambda ids: None)),
        range_buffer=deque(RangeSpec(f"1-4-0-{i}-1", 4, i, i) for i in range(100)))

    Relay.distribute_ranges(relay)

    got = {0: [r for _, ranges in local for r in ranges]}
    for rank, _, ranges in sent:
        got.setdefault(rank, []).extend(ranges)
    everything = [r for ranges in got.values() for r in ranges]
    assert sorted(everything) == sorted(f"1-4-0-{i}-1" for i in range(100)) and not relay.range_buffer
    assert relay.held_ranges == {r: rank for rank, ranges in got.items() for r in ranges}
    assert relay.rank_ranges == [len(got[0]), len(got[1]), len(got[2])]
    per_core = [len(got[0]), len(got[1]) / 2, len(got[2])]
    assert max(per_core) - min(per_core) <= relay_mod.RANGE_CHUNK
    assert all(job_ids == [4] for _, job_ids, _ in sent) and [j for j, _ in local] == [[4]]  # the spec goes once

    sent.clear()
    local.clear()
    relay.range_buffer.extend(RangeSpec(f"1-4-0-{i}-1", 4, i, i) for i in range(100, 200))
    Relay.distribute_ranges(relay)

    assert relay.rank_ranges == [40, 80, 40]  # full: 160 of the 200 handed out, 40 wait in the buffer
    assert [r.range_id for r in relay.range_buffer] == [f"1-4-0-{i}-1" for i in range(160, 200)]
    assert all(job_ids == [] for _, job_ids, _ in sent) and all(j == [] for j, _ in local)
