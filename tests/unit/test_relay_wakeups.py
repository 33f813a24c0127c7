"""What wakes the relay's loop: besides the tower's socket and payload exits, the pipes of rank 0's own
event-service payloads, so one asking for ranges is fed at once, not after the poll's timeout."""

from __future__ import annotations

import os
from types import SimpleNamespace

import zmq

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
