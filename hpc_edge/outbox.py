"""The relay's outbox: numbered updates kept until the tower acknowledges them.

Kept in memory up to a byte limit; beyond it the oldest updates spill to files in a node-local
spool directory, so a long tower outage neither loses results nor exhausts the node's memory.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class Pending:
    data: bytes | None       # None when spilled to ``path``
    path: Path | None
    sent: float
    job_ids: frozenset[int]
    range_ids: frozenset[str]
    size: int


class Outbox:
    def __init__(self, memory_limit: int = 64 * 2**20, spool_dir: Path | None = None):
        self.memory_limit = memory_limit
        self._spool_dir = spool_dir
        self.items: dict[int, Pending] = {}
        self.in_memory = 0

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def spool_dir(self) -> Path:
        if self._spool_dir is None:
            self._spool_dir = Path(tempfile.mkdtemp(prefix="hpc-edge-outbox-"))
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        return self._spool_dir

    def add(self, seq: int, data: bytes, sent: float, job_ids, range_ids) -> None:
        self.items[seq] = Pending(data, None, sent, frozenset(job_ids), frozenset(range_ids), len(data))
        self.in_memory += len(data)
        self._spill()

    def _spill(self) -> None:
        for seq, item in self.items.items():
            if self.in_memory <= self.memory_limit:
                return
            if item.data is None:
                continue
            path = self.spool_dir / f"{seq:012d}.msg"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(item.data)
            os.replace(tmp, path)
            item.data, item.path = None, path
            self.in_memory -= item.size
            logger.warning("outbox over %d bytes: update %d spilled to %s", self.memory_limit, seq, path)

    def data(self, seq: int) -> bytes:
        item = self.items[seq]
        return item.data if item.data is not None else item.path.read_bytes()

    def ack(self, seq: int) -> None:
        item = self.items.pop(seq, None)
        if item is not None:
            self._drop(item)

    def ack_upto(self, seq: int) -> None:
        for s in [s for s in self.items if s <= seq]:
            self._drop(self.items.pop(s))

    def _drop(self, item: Pending) -> None:
        if item.data is not None:
            self.in_memory -= item.size
        elif item.path is not None:
            item.path.unlink(missing_ok=True)

    def due(self, now: float, resend_s: float) -> list[int]:
        return [s for s, item in self.items.items() if now - item.sent > resend_s]

    def mark_sent(self, seq: int, now: float) -> None:
        self.items[seq].sent = now

    def known_jobs(self) -> set[int]:
        return set().union(*(i.job_ids for i in self.items.values())) if self.items else set()

    def known_ranges(self) -> set[str]:
        return set().union(*(i.range_ids for i in self.items.values())) if self.items else set()

    def close(self) -> None:
        if self._spool_dir is not None and not self.items:
            shutil.rmtree(self._spool_dir, ignore_errors=True)
