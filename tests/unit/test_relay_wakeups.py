"""What wakes the relay's loop: besides the tower's socket and payload exits, the pipes of rank 0's own
event-service payloads, so one asking for ranges is fed at once, not after the poll's timeout; and
what no loop waits on: a payload's stdout at its end."""

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
