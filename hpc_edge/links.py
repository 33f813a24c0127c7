"""How a relay talks to its tower: one ZeroMQ DEALER (CURVE), or files in a per-worker directory on
a shared filesystem for sites whose compute nodes cannot reach the login node at all.

Both carry the same encoded messages. A file is written under a temporary name and renamed into
place (a reader never sees half a message); a reader claims a file by renaming it, so no message is
read twice, even by two readers.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path

import zmq

logger = logging.getLogger(__name__)

TO_TOWER = "to_tower"
TO_RELAY = "to_relay"


class Mailbox:
    """One direction of a file exchange."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._n = itertools.count()

    def put(self, data: bytes) -> None:
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._n):08d}.msg"
        tmp = self.dir / f".{name}.part"  # not a .msg until renamed: no reader takes it early
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)

    def take(self, limit: int = 10_000) -> list[bytes]:
        """Claim and read the waiting messages, oldest first."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(".msg") and not n.startswith("."))[:limit]
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            path, claimed = self.dir / name, self.dir / f"{name}.read"
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another reader claimed it
            try:
                out.append(claimed.read_bytes())
            finally:
                claimed.unlink(missing_ok=True)
        return out


class ZmqLink:
    """A DEALER to the tower's ROUTER; reports reconnects so the relay can say hello again."""

    def __init__(self, address: str, identity: str, curve: tuple[bytes, bytes, bytes] | None, ctx=None):
        self.address, self.identity, self.curve = address, identity, curve
        self.ctx = ctx or zmq.Context.instance()
        self.handshakes = 0

    def start(self, poller: zmq.Poller) -> None:
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.IDENTITY, self.identity.encode())
        if self.curve:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = self.curve
        self.sock.connect(self.address)
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)

    def send(self, data: bytes) -> None:
        self.sock.send(data, copy=False)

    def receive(self, ready: dict) -> list[bytes]:
        if self.sock not in ready:
            return []
        out = []
        while True:
            try:
                out.append(self.sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                return out

    def reconnected(self, ready: dict) -> bool:
        """True when the connection came back after a first one (a tower restart, a network cut)."""
        if self.monitor not in ready:
            return False
        from zmq.utils.monitor import recv_monitor_message

        again = False
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return again
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshakes += 1
                again = again or self.handshakes > 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                logger.warning("relay %s: lost the connection to the tower; payloads go on", self.identity)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close()
        self.sock.close()


class FileLink:
    """The same messages through ``<dir>/to_tower`` and ``<dir>/to_relay`` on a shared filesystem."""

    def __init__(self, directory: Path, poll_s: float = 0.05):
        self.outbox = Mailbox(Path(directory) / TO_TOWER)
        self.inbox = Mailbox(Path(directory) / TO_RELAY)
        self.poll_s = poll_s
        self._last = 0.0

    def start(self, poller: zmq.Poller) -> None:
        pass

    def send(self, data: bytes) -> None:
        self.outbox.put(data)

    def receive(self, _ready: dict) -> list[bytes]:
        now = time.monotonic()
        if now - self._last < self.poll_s:
            return []
        self._last = now
        return self.inbox.take()

    def reconnected(self, _ready: dict) -> bool:
        return False

    def close(self) -> None:
        pass
