"""What a payload is on a node, whichever path starts it (the executor's, compiled or not, and the
event service's): its argv, its environment, its directory, and what it leaves there."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ErrorCode
from .monitor import Progress
from .protocol import FileInfo, JobSpec

STDOUT_NAME = "payload.stdout"
STDERR_NAME = "payload.stderr"
_SHELL_CHARS = set("|&;<>()$`\\\"'*?[]#~=%{}\n")
# Words only a shell runs (POSIX special and regular built-ins that are no program, reserved words):
# "exit 3", "cd sub", "ulimit -v 1000", "source setup.sh" need /bin/sh even without a special character
_SHELL_WORDS = frozenset(
    "break : continue . eval exec exit export readonly return set shift times trap unset "
    "alias bg cd command fc fg getopts hash jobs read type ulimit umask unalias wait source "
    "! { } case do done elif else esac fi for if in then until while time".split())


def payload_argv(command: str) -> list[str]:
    """A command string as argv: exec'd directly when it needs no shell, else through /bin/sh -c."""
    if _SHELL_CHARS.isdisjoint(command):
        argv = command.split()
        if argv and argv[0] not in _SHELL_WORDS:
            return argv
    return ["/bin/sh", "-c", command]


# What an MPI launcher gives each rank so that MPI_Init finds the rest of the job: MPICH's hydra
# (PMI_FD, PMI_RANK, PMI_SIZE, HYDI_CONTROL_FD, MPI_LOCALRANKID ...), Slurm's srun --mpi=pmi2 (PMI_*)
# and PMIx launchers (PMIX_*). A payload that inherited them would take itself for a rank of the
# worker's MPI job: MPI_Init in it (a Python payload importing mpi4py, say) writes to the rank's PMI
# descriptor, which the payload does not have (or, worse, has opened as one of its own files).
# Without them MPI in a payload starts as a singleton, or under the payload's own mpiexec.
RANK_ONLY_VARIABLES = ("PMI_", "PMIX_", "HYDI_", "MPI_LOCALNRANKS", "MPI_LOCALRANKID")


def payload_base_env(environ) -> dict[str, str]:
    """The worker's environment for its payloads: without what the MPI launcher set for this rank
    (RANK_ONLY_VARIABLES), with the worker's Python first on PATH (so payloads find ``python``)."""
    env = {name: value for name, value in environ.items() if not name.startswith(RANK_ONLY_VARIABLES)}
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["HPC_EDGE_PYTHON"] = sys.executable
    return env


def make_workdir(path: str, first: bool = False) -> None:
    """A payload's fresh directory; on a job's first dispatch its parent (the job's directory) too.

    One mkdir per level that is new, no probing: on local disks a mkdir costs tens of microseconds."""
    if first:
        try:
            os.mkdir(os.path.dirname(path))
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path)
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        pass


def remove_dir(path: str, names: list[str]) -> None:
    """Remove a payload's scratch directory holding (we expect) only these files: an unlink each and
    an rmdir, not a walk over the tree; a walk when the payload left more."""
    try:
        for name in names:
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def check_outputs(workdir: str | Path, outputs: tuple[str, ...]) -> tuple[tuple[FileInfo, ...],
                                                                         tuple[ErrorCode, str] | None]:
    """Sizes of the expected outputs, and the first problem with them (missing or empty)."""
    files: list[FileInfo] = []
    for name in outputs:
        path = Path(workdir) / name
        try:
            size = path.stat().st_size
        except OSError:
            return tuple(files), (ErrorCode.OUTPUT_MISSING, f"expected output {name} is missing")
        files.append(FileInfo(name=name, size=size))
        if size == 0:
            return tuple(files), (ErrorCode.OUTPUT_EMPTY, f"expected output {name} is empty")
    return tuple(files), None


@dataclass
class Running:
    """A payload running on this rank, as its executor tracks it."""

    spec: JobSpec
    pid: int
    start_time: float
    start_mono: float
    workdir: str  # where it runs: the job's directory, or one on the rank's scratch
    stop_reason: ErrorCode | None = None
    stop_diag: str = ""
    sigterm_at: float | None = None
    progress: Progress = field(default_factory=Progress)
    next_check: float = 0.0
