"""A rank's watchdog: kills the rank's payloads if the rank dies without doing so itself.

Payloads run in their own process groups, so killing an MPI job (``kill -9`` of mpiexec, a node
agent's SIGKILL) would leave them running. Each rank therefore starts this small process in a session
of its own. The rank keeps the groups it guards in a table of process ids in shared memory (a memfd
both map: one store per payload start or end, no message, no wake-up), and holds a pipe to the
watchdog open. When the pipe closes (the rank is gone, however it ended) the watchdog reads the table
and SIGKILLs every group still in it, then exits.

The MPI library's shared-memory segments (files in /dev/shm that MPI_Finalize removes) are named to
the watchdog over the pipe at start, and the rank leaves the pipe open until its process exits: the
watchdog then removes whichever of them are still there, so a killed MPI job does not leave its
node's memory behind (after an orderly MPI_Finalize there is nothing left to remove). The watchdog
starts before MPI_Init and is told when: a rank killed before it could name its segments (during
MPI's start-up), or whose sibling's watchdog was killed with it, leaves segments that no name list
holds; so at the end it also removes this user's MPI segments created since then that no process
maps any more.
"""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from array import array

_SLOT = 4  # bytes per pid (int32)
SEGMENT_DIR = "/dev/shm"
# MPICH; UCX, its transport here; Open MPI (old, new)
SEGMENT_PREFIXES = ("mpich_shm_", "ucx_shm_posix_", "vader_segment.", "sm_segment.")
# a segment younger than this may be another job's, created a moment ago and not mapped yet
SETTLE_S = 0.5


class Watchdog:
    """The rank's side: a table of guarded process-group ids, and the pipe whose end is the alarm."""

    def __init__(self, slots: int = 1024):
        self._fd = os.memfd_create("hpc-edge-watchdog", os.MFD_CLOEXEC)
        self._slots = 0
        self._map: mmap.mmap | None = None
        self._where: dict[int, int] = {}  # pgid -> slot
        self._free: list[int] = []
        self._grow(slots)
        # run as a bare script in isolated mode: the standard library only, no site, no package import
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", __file__, str(self._fd)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
                                     bufsize=0, cwd="/", pass_fds=(self._fd,))

    def _grow(self, slots: int) -> None:
        os.ftruncate(self._fd, slots * _SLOT)  # new slots read as zero: empty
        if self._map is not None:
            self._map.close()
        self._map = mmap.mmap(self._fd, slots * _SLOT)
        self._free.extend(range(slots - 1, self._slots - 1, -1))
        self._slots = slots

    def started(self, pgid: int) -> None:
        if not self._free:
            self._grow(self._slots * 2)
        slot = self._free.pop()
        self._map[slot * _SLOT:(slot + 1) * _SLOT] = pgid.to_bytes(_SLOT, sys.byteorder, signed=True)
        self._where[pgid] = slot

    def ended(self, pgid: int) -> None:
        slot = self._where.pop(pgid, None)
        if slot is not None:
            self._map[slot * _SLOT:(slot + 1) * _SLOT] = bytes(_SLOT)
            self._free.append(slot)

    def reserve(self, slots: int) -> None:
        """Make sure this many slots are free (the compiled path takes them itself: table())."""
        if len(self._free) < slots:
            self._grow(max(self._slots * 2, self._slots + slots))

    def table(self) -> tuple:
        """(the table, its free slots, pgid -> slot) for hpc_edge/_fastrun.c, which keeps them as
        started() and ended() do."""
        return self._map, self._free, self._where

    @property
    def guarded(self) -> set[int]:
        return set(self._where)

    def guard_files(self, paths: list[str]) -> None:
        """Files to remove if the rank dies without an orderly end (its MPI shared memory)."""
        self._tell("".join(f"file {p}\n" for p in paths))

    def sweep_segments_since(self, t_ns: int) -> None:
        """At the end, also remove this user's MPI segments created since ``t_ns`` (this rank's start,
        before MPI_Init) that no process maps: those nobody could name."""
        self._tell(f"sweep {int(t_ns)}\n")

    def guard_tree(self, path: str) -> None:
        """A directory to remove with its contents when the rank is gone (its payloads' scratch)."""
        self._tell(f"tree {path}\n")

    def _tell(self, lines: str) -> None:
        try:
            self.proc.stdin.write(lines.encode())
        except (BrokenPipeError, OSError):
            pass  # the watchdog is gone: nothing to tell


def guarded_groups(fd: int) -> set[int]:
    """The process-group ids in the table behind fd (its current size: the rank may have grown it)."""
    table = array("i")
    table.frombytes(os.pread(fd, os.fstat(fd).st_size, 0))
    return {pgid for pgid in table if pgid > 0}


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # outlive the job's SIGTERM; leave on the pipe's end
    fd = int(argv[0])
    files: set[str] = set()
    trees: set[str] = set()
    since: int | None = None
    for line in sys.stdin.buffer:  # ends when the rank is gone, however it ended
        if line.startswith(b"file "):
            files.add(os.fsdecode(line[5:].rstrip(b"\n")))
        elif line.startswith(b"tree "):
            trees.add(os.fsdecode(line[5:].rstrip(b"\n")))
        elif line.startswith(b"sweep "):
            # file times come from a coarse clock (a tick behind): look a second further back
            since = int(line[6:]) - 1_000_000_000
    for pgid in guarded_groups(fd):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for path in files:
        try:
            os.unlink(path)
        except OSError:
            pass
    for path in trees:
        shutil.rmtree(path, ignore_errors=True)
    if since is not None:
        sweep_segments(since)
    return 0


def sweep_segments(since_ns: int, directory: str = SEGMENT_DIR, settle_s: float = SETTLE_S) -> list[str]:
    """Remove this user's MPI segments in ``directory`` created since ``since_ns`` that no process
    maps; return their paths. One just created (younger than ``settle_s``) is looked at again once it
    is that old, in case its job maps it meanwhile."""
    stray = stray_segments(since_ns, directory)
    if not stray:
        return []
    newest = max(_ctime(p) for p in stray)
    wait = newest / 1e9 + settle_s - time.time()
    if wait > 0:
        time.sleep(min(wait, settle_s))
        stray = stray_segments(since_ns, directory)
    for path in stray:
        try:
            os.unlink(path)
        except OSError:
            pass
    return stray


def stray_segments(since_ns: int, directory: str = SEGMENT_DIR) -> list[str]:
    """This user's MPI segments in ``directory`` created (or changed) since ``since_ns`` that no
    process maps."""
    uid = os.getuid()
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        if not name.startswith(SEGMENT_PREFIXES):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == uid and st.st_ctime_ns >= since_ns:
            found.append(path)
    if not found:
        return []
    mapped = mapped_files()
    return sorted(p for p in found if p not in mapped)


def mapped_files(proc: str = "/proc") -> set[str]:
    """Every file that a process whose memory map this user may read has mapped."""
    out = set()
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            out.update(path for _, path in _mappings(f"{proc}/{pid}/maps"))
        except OSError:
            continue  # gone, or not ours
    return out


def _ctime(path: str) -> int:
    try:
        return os.lstat(path).st_ctime_ns
    except OSError:
        return 0


def shared_memory_files(maps: str = "/proc/self/maps") -> list[str]:
    """Files under /dev/shm this process maps shared and that still have a name (MPI's segments)."""
    return sorted({path for perms, path in _mappings(maps)
                   if "s" in perms and path.startswith("/dev/shm/") and not path.rstrip().endswith("(deleted)")})


def _mappings(maps: str):
    """(permissions, path) of each file mapping a /proc/<pid>/maps file lists."""
    with open(maps) as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6:
                yield fields[1], fields[5].rstrip("\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
