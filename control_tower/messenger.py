"""The tower's side of the shared-filesystem messenger: the relays' messages arrive as files in
``<root>/<worker id>/to_tower`` and replies go to ``<root>/<worker id>/to_relay`` (see hpc_edge.links)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from hpc_edge.links import TO_RELAY, TO_TOWER, Mailbox

logger = logging.getLogger(__name__)


class FileMessenger:
    def __init__(self, root: Path, poll_s: float = 0.05):
        self.root = Path(root)
        self.poll_s = poll_s
        self.inboxes: dict[str, Mailbox] = {}
        self.outboxes: dict[str, Mailbox] = {}
        self._last = 0.0

    def worker_dir(self, worker_id: str) -> Path:
        path = self.root / worker_id
        (path / TO_TOWER).mkdir(parents=True, exist_ok=True, mode=0o700)
        (path / TO_RELAY).mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def poll(self) -> list[tuple[str, bytes]]:
        """Messages waiting from every worker directory, each worker's oldest first."""
        now = time.monotonic()
        if now - self._last < self.poll_s:
            return []
        self._last = now
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return [(worker_id, data) for worker_id in names for data in self.take(worker_id)]

    def take(self, worker_id: str) -> list[bytes]:
        """What one worker has sent and is waiting, now (no poll interval)."""
        box = self.inboxes.get(worker_id)
        if box is None:
            if not (self.root / worker_id / TO_TOWER).is_dir():
                return []
            box = self.inboxes[worker_id] = Mailbox(self.root / worker_id / TO_TOWER)
        return box.take()

    def knows(self, worker_id: str) -> bool:
        return worker_id in self.inboxes

    def send(self, worker_id: str, data: bytes) -> None:
        box = self.outboxes.get(worker_id)
        if box is None:
            box = self.outboxes[worker_id] = Mailbox(self.root / worker_id / TO_RELAY)
        box.put(data)

    def forget(self, worker_id: str) -> None:
        """A worker is gone: drop its directory (what was still addressed to it is moot)."""
        import shutil

        self.inboxes.pop(worker_id, None)
        self.outboxes.pop(worker_id, None)
        shutil.rmtree(self.root / worker_id, ignore_errors=True)
