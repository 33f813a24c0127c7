"""Starting payload processes cheaply: ``posix_spawn`` (vfork and exec, no Python in the child).

``subprocess.Popen`` costs a rank about 2.5 times the CPU of ``posix_spawn`` per payload (its env
encoding, error pipe and bookkeeping run in Python); with thousands of short payloads that is what
the ranks spend their time on. What Popen gave us is kept:

- the working directory: the rank changes into it around the spawn (the child inherits it) and
  changes back at once; the rank's other threads use absolute paths only;
- a new session (``setsid``), stdin from /dev/null, stdout and stderr into files of the working
  directory, opened by the child;
- SIGPIPE and SIGXFSZ back to their defaults (Python ignores them; Popen restores them too);
- no stray descriptors: Python opens its own non-inheritable, and every second the spawner marks
  any inheritable descriptor above 2 (MPI libraries may open some) as close-on-exec;
- the program is looked up on the PATH the payload gets, not the rank's.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import time

_OUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_SIGDEF = (signal.SIGPIPE, signal.SIGXFSZ)
FD_CHECK_S = 1.0


class Spawner:
    def __init__(self, stdout_name: str, stderr_name: str):
        self.stdout_name, self.stderr_name = stdout_name, stderr_name
        self._home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._programs: dict[tuple[str, str], str] = {}
        self.fds_checked = 0.0

    def spawn(self, argv: list[str], cwd: str, env: dict[str, str]) -> int:
        """Start argv in cwd with env, in a new session; return its pid. OSError if it cannot start."""
        if time.monotonic() - self.fds_checked > FD_CHECK_S:
            close_on_exec_all()
            self.fds_checked = time.monotonic()
        key = (argv[0], env.get("PATH", os.defpath))
        program = self._programs.get(key) or self._resolve(*key)
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 1, self.stdout_name, _OUT_FLAGS, 0o666),
                   (os.POSIX_SPAWN_OPEN, 2, self.stderr_name, _OUT_FLAGS, 0o666)]
        os.chdir(cwd)
        try:
            return os.posix_spawn(program, argv, env, file_actions=actions, setsid=True, setsigdef=_SIGDEF,
                                  setsigmask=())
        except FileNotFoundError:
            if "/" in argv[0] or self._programs.pop(key, None) is None:
                raise
            # the program we found before has gone (a new PATH entry, a reinstall): look again
            return os.posix_spawn(self._resolve(*key), argv, env, file_actions=actions, setsid=True,
                                  setsigdef=_SIGDEF, setsigmask=())
        finally:
            os.fchdir(self._home)

    def program(self, name: str, path: str) -> str:
        """The program argv[0] names, looked up on ``path`` as spawn does ("" if not found: starting
        it fails with ENOENT, as spawn would)."""
        try:
            return self._programs.get((name, path)) or self._resolve(name, path)
        except FileNotFoundError:
            return ""

    def _resolve(self, name: str, path: str) -> str:
        if "/" in name:  # as exec would: relative to the working directory, no PATH search
            return name
        found = shutil.which(name, path=path)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
        found = os.path.abspath(found)
        self._programs[(name, path)] = found
        return found

    def close(self) -> None:
        os.close(self._home)


def close_on_exec_all() -> None:
    """Mark every inheritable descriptor above 2 of this process close-on-exec."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, already closed
