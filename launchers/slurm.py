"""Slurm: ``sbatch --parsable``, ``squeue`` (plus ``sacct`` for jobs squeue forgot), ``scancel``.

Status is one ``squeue -h -t all -o '%i %T' --jobs=a,b,c`` call for any number of workers. squeue
forgets a finished job ``MinJobAge`` seconds (default 300) after it ends; an id absent from its output
is then asked of accounting, in one more call: ``sacct -X -n -P -o JobID,State`` where slurmdbd runs,
or ``sacct -c ...`` (the job-completion log, ``JobCompType=jobcomp/filetxt``) where it does not. Which
one works is found out on first use (``accounting="auto"``); when neither does, the id is UNKNOWN.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .base import BatchState, CommandError, LauncherError, SubmitError, WorkerSpec, run_command
from .render import TemplatedLauncher

logger = logging.getLogger(__name__)

# Every state name squeue (%T) or sacct prints in Slurm 22.05 (squeue(1) "JOB STATE CODES",
# slurm.h job_state_string()), mapped to what hpc-edge needs to know.
SLURM_STATES: dict[str, BatchState] = {
    # not yet running
    "PENDING": BatchState.QUEUED,
    "CONFIGURING": BatchState.QUEUED,  # allocated, nodes still booting: the payload has not started
    "POWER_UP_NODE": BatchState.QUEUED,  # allocated, nodes powering up
    "REQUEUED": BatchState.QUEUED,  # completing job being put back in the queue
    "REQUEUE_FED": BatchState.QUEUED,
    "REQUEUE_HOLD": BatchState.QUEUED,  # requeued and held
    "RESV_DEL_HOLD": BatchState.QUEUED,  # held after its reservation was deleted
    # holds an allocation (the worker may still talk, or will again)
    "RUNNING": BatchState.RUNNING,
    "COMPLETING": BatchState.RUNNING,  # some processes may still be active: not over yet
    "SIGNALING": BatchState.RUNNING,
    "RESIZING": BatchState.RUNNING,
    "SUSPENDED": BatchState.RUNNING,  # allocation kept, execution paused (as Harvester counts it)
    "STOPPED": BatchState.RUNNING,  # SIGSTOP, CPUs retained
    "STAGE_OUT": BatchState.RUNNING,  # burst-buffer stage-out after the script ended
    # ended
    "COMPLETED": BatchState.DONE,
    "FAILED": BatchState.FAILED,
    "TIMEOUT": BatchState.FAILED,  # killed at the time limit: the relay should have drained before
    "NODE_FAIL": BatchState.FAILED,
    "BOOT_FAIL": BatchState.FAILED,
    "OUT_OF_MEMORY": BatchState.FAILED,
    "DEADLINE": BatchState.FAILED,
    "PREEMPTED": BatchState.FAILED,  # terminated by preemption (a requeued one shows REQUEUED)
    "LAUNCH_FAILED": BatchState.FAILED,
    "SPECIAL_EXIT": BatchState.FAILED,  # requeued in a held special state by the site's epilog
    "CANCELLED": BatchState.CANCELLED,  # sacct prints "CANCELLED by <uid>"
    "REVOKED": BatchState.CANCELLED,  # federation: a sibling started elsewhere, this one was removed
}

_PARSABLE = re.compile(r"^(?P<id>\d+(?:_\d+)?)(?:;(?P<cluster>\S+))?$")


def slurm_state(text: str) -> BatchState:
    """Map one state word as squeue or sacct prints it (``CANCELLED by 0``, ``RUNNING``)."""
    word = text.strip().split(" ", 1)[0].rstrip("+").upper()
    state = SLURM_STATES.get(word)
    if state is None:
        logger.warning("slurm: unrecognised job state %r, treating it as unknown", text)
        return BatchState.UNKNOWN
    return state


def parse_id_state_lines(text: str, sep: str | None) -> dict[str, BatchState]:
    """``<id><sep><state>`` lines (squeue ``%i %T``, sacct ``-P``) to states; the last line wins."""
    states: dict[str, BatchState] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split(sep, 1)
        if len(parts) != 2:
            raise LauncherError(f"slurm: cannot parse status line {line!r} (expected '<jobid> <state>')")
        job_id, state = parts[0].strip(), parts[1].strip()
        states[job_id] = slurm_state(state)
    return states


class SlurmLauncher(TemplatedLauncher):
    """Slurm adapter. ``accounting``: ``auto`` | ``sacct`` | ``jobcomp`` | ``none``."""

    name = "slurm"
    template_name = "slurm.sh.j2"
    default_mpi_launch = "srun --mpi=pmi2"

    def __init__(self, *args, accounting: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if accounting not in ("auto", "sacct", "jobcomp", "none"):
            raise LauncherError(f"slurm: accounting must be auto|sacct|jobcomp|none, got {accounting!r}")
        self.accounting = accounting

    # -- pure builders and parsers -------------------------------------------------------------

    def submit_argv(self, script_path: Path, spec: WorkerSpec) -> list[str]:
        return ["sbatch", "--parsable", "-D", str(spec.workdir), str(script_path)]

    def parse_submit_output(self, text: str) -> str:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        match = _PARSABLE.match(lines[-1]) if lines else None
        if match is None:
            raise SubmitError(f"slurm: sbatch --parsable printed {text.strip()!r}, expected '<jobid>[;cluster]'")
        return match.group("id")

    def status_argv(self, batch_ids: list[str]) -> list[str]:
        return ["squeue", "-h", "-t", "all", "-o", "%i %T", f"--jobs={','.join(batch_ids)}"]

    def parse_status(self, text: str) -> dict[str, BatchState]:
        return parse_id_state_lines(text, None)

    def sacct_argv(self, batch_ids: list[str], jobcomp: bool) -> list[str]:
        head = ["sacct", "-c"] if jobcomp else ["sacct"]
        return [*head, "-X", "-n", "-P", "-o", "JobID,State", f"--jobs={','.join(batch_ids)}"]

    def parse_sacct(self, text: str) -> dict[str, BatchState]:
        return parse_id_state_lines(text, "|")

    def cancel_argv(self, batch_ids: list[str]) -> list[str]:
        return ["scancel", *batch_ids]

    def tolerated_status_output(self, exc: CommandError) -> str | None:
        # Without "-t all" squeue fails on ids it does not know; with it, it prints nothing for them.
        return exc.stdout if "Invalid job id specified" in exc.stderr else None

    # -- status with the accounting fallback ---------------------------------------------------

    def status(self, batch_ids: list[str]) -> dict[str, BatchState]:
        states = super().status(batch_ids)
        forgotten = [bid for bid, state in states.items() if state is BatchState.UNKNOWN]
        if forgotten:
            states.update(self.remember_cancels(self.accounting_states(forgotten)))
        return states

    def accounting_states(self, batch_ids: list[str]) -> dict[str, BatchState]:
        """States of ids squeue no longer knows, from sacct or the job-completion log (one call)."""
        probing = self.accounting == "auto"
        for jobcomp in self._accounting_modes():
            try:
                out = run_command(self.sacct_argv(batch_ids, jobcomp), timeout=self.command_timeout_s)
            except CommandError as exc:
                if probing:
                    logger.info("slurm: %s unusable here (%s); not asking it again", " ".join(exc.argv[:2]), exc)
                    self.accounting = "none" if jobcomp else "jobcomp"
                    continue
                logger.warning("slurm: accounting query failed, states of %s unknown: %s", batch_ids, exc)
                break
            if probing:
                self.accounting = "jobcomp" if jobcomp else "sacct"
            found = self.parse_sacct(out)
            return {bid: found.get(bid, BatchState.UNKNOWN) for bid in batch_ids}
        return {bid: BatchState.UNKNOWN for bid in batch_ids}

    def _accounting_modes(self) -> list[bool]:
        """Which sacct flavours to try, in order (False: slurmdbd, True: ``-c`` job-completion log)."""
        return {"auto": [False, True], "sacct": [False], "jobcomp": [True], "none": []}[self.accounting]

    def cancel_error_is_harmless(self, exc: CommandError) -> bool:
        return "already completed" in exc.stderr or "Invalid job id specified" in exc.stderr
