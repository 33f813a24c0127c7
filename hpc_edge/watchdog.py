"""A rank's watchdog: kills the rank's payloads if the rank dies without doing so itself.

Payloads run in their own process groups, so killing an MPI job (``kill -9`` of mpiexec, a node
agent's SIGKILL) would leave them running. Each rank therefore starts this small process in a session
of its own and tells it, over a pipe, which payload groups it starts and reaps. When the pipe closes
(the rank is gone, however it ended) the watchdog SIGKILLs every group still listed, then exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


class Watchdog:
    """The rank's end of the pipe."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "hpc_edge.watchdog"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, start_new_session=True, bufsize=0, cwd="/")
        self._lines: list[str] = []

    def started(self, pgid: int) -> None:
        self._lines.append(f"+{pgid}\n")

    def ended(self, pgid: int) -> None:
        self._lines.append(f"-{pgid}\n")

    def flush(self) -> None:
        """Tell the watchdog what changed (once per turn of the rank's loop, not per payload).

        A payload started in this turn is guarded from the end of the turn: a rank killed in
        between leaves at most that turn's payloads unguarded."""
        if not self._lines:
            return
        data, self._lines = "".join(self._lines).encode(), []
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, OSError):
            pass  # the watchdog died: payloads simply lose their guard

    def close(self) -> None:
        """An orderly end: nothing left to guard."""
        try:
            self.flush()
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # outlive the job's SIGTERM; leave on the pipe's end
    guarded: set[int] = set()
    for line in sys.stdin.buffer:
        text = line.strip().decode(errors="replace")
        if len(text) > 1 and text[1:].isdigit():
            (guarded.add if text[0] == "+" else guarded.discard)(int(text[1:]))
    for pgid in guarded:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
