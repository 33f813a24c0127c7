"""The batch-system adapter interface.

An adapter is a template method: pure builders (``submit_argv``, ``status_argv``, ``cancel_argv``),
pure parsers (``parse_submit_output``, ``parse_status``) and a pure ``render_script``, around one
``run_command(argv)`` that never uses a shell. Everything but ``run_command`` is testable without a
cluster. This package imports neither ``hpc_edge`` nor ``control_tower``.
"""

from __future__ import annotations

import enum
import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


class LauncherError(Exception):
    """Base of every error raised by a launcher."""


class SubmitError(LauncherError):
    """The batch system refused or failed a submission."""


class StatusError(LauncherError):
    """The batch system could not report job states."""


class CancelError(LauncherError):
    """The batch system could not cancel a job."""


class CommandError(LauncherError):
    """A batch command exited non-zero; carries argv, exit code and output."""

    def __init__(self, argv: list[str], returncode: int, stdout: str, stderr: str):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{argv[0]} exited {returncode}: {stderr.strip() or stdout.strip()}")


class BatchState(str, enum.Enum):
    """A batch job's state as hpc-edge sees it, whatever the batch system calls it."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # the batch system no longer knows the id

    @property
    def terminal(self) -> bool:
        return self in (BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED, BatchState.UNKNOWN)


@dataclass
class WorkerSpec:
    """One MPI job (a worker) to submit.

    ``command`` is the program every rank runs (e.g. ``[python, -m, hpc_edge, worker, ...]``); the
    adapter wraps it in the site's MPI launch command and its batch script.
    """

    worker_id: str
    command: list[str]
    workdir: Path
    nodes: int = 1
    ranks_per_node: int = 1
    cores_per_rank: int = 1
    gpus_per_node: int = 0
    walltime_s: int = 3600
    env: dict[str, str] = field(default_factory=dict)
    job_name: str = "hpc-edge"
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    setup_lines: list[str] = field(default_factory=list)
    mpi_launch: str | None = None  # e.g. "srun --mpi=pmi2", "mpiexec", "aprun", "jsrun"
    warning_signal_s: int = 90
    extra_directives: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"{self.worker_id}.out"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.worker_id}.err"


def format_walltime(seconds: int | float) -> str:
    """Seconds as ``HH:MM:SS`` (90 min is ``01:30:00``; hours may exceed 24)."""
    total = int(seconds)
    if total <= 0:
        raise ValueError(f"walltime must be positive, got {seconds!r}")
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def run_command(argv: list[str], timeout: float = 60.0, input_text: str | None = None) -> str:
    """Run a batch command without a shell; return its stdout or raise CommandError."""
    logger.debug("running %s", argv)
    try:
        proc = subprocess.run(
            argv, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, "", f"command not found: {argv[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, -1, "", f"timed out after {timeout} s") from exc
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


class Launcher:
    """What the tower's provisioner calls. Subclasses implement the three verbs."""

    name = "base"

    def submit(self, spec: WorkerSpec) -> str:
        """Submit one worker; return its batch id."""
        raise NotImplementedError

    def status(self, batch_ids: list[str]) -> dict[str, BatchState]:
        """States of many batch ids in one call; ids the system no longer knows map to UNKNOWN."""
        raise NotImplementedError

    def cancel(self, batch_ids: list[str]) -> None:
        """Cancel batch jobs."""
        raise NotImplementedError


class ScriptLauncher(Launcher):
    """A batch system driven by a rendered script and command-line tools (Slurm, PBS, LSF)."""

    template_name = ""

    def render_script(self, spec: WorkerSpec) -> str:
        raise NotImplementedError

    def submit_argv(self, script_path: Path, spec: WorkerSpec) -> list[str]:
        raise NotImplementedError

    def parse_submit_output(self, text: str) -> str:
        raise NotImplementedError

    def status_argv(self, batch_ids: list[str]) -> list[str]:
        raise NotImplementedError

    def parse_status(self, text: str) -> dict[str, BatchState]:
        raise NotImplementedError

    def cancel_argv(self, batch_ids: list[str]) -> list[str]:
        raise NotImplementedError

    def submit(self, spec: WorkerSpec) -> str:
        spec.workdir.mkdir(parents=True, exist_ok=True)
        script = spec.workdir / f"{spec.worker_id}.{self.name}.sh"
        script.write_text(self.render_script(spec))
        script.chmod(0o700)
        try:
            out = run_command(self.submit_argv(script, spec))
        except CommandError as exc:
            raise SubmitError(f"{self.name}: submitting {script} failed: {exc}") from exc
        batch_id = self.parse_submit_output(out)
        logger.info("%s: submitted worker %s as batch job %s", self.name, spec.worker_id, batch_id)
        return batch_id

    def status(self, batch_ids: list[str]) -> dict[str, BatchState]:
        if not batch_ids:
            return {}
        try:
            out = run_command(self.status_argv(batch_ids))
        except CommandError as exc:
            raise StatusError(f"{self.name}: status query failed: {exc}") from exc
        states = self.parse_status(out)
        return {bid: states.get(bid, BatchState.UNKNOWN) for bid in batch_ids}

    def cancel(self, batch_ids: list[str]) -> None:
        if not batch_ids:
            return
        try:
            run_command(self.cancel_argv(batch_ids))
        except CommandError as exc:
            raise CancelError(f"{self.name}: cancel of {batch_ids} failed: {exc}") from exc
