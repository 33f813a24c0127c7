"""IBM Spectrum LSF: ``bsub`` (script on stdin), ``bjobs -o``, ``bkill``.

LSF reads ``#BSUB`` directives only from a script given on standard input (``bsub < script`` in a
shell). Like Harvester, hpc-edge runs ``bsub -L /bin/sh`` and hands the script text to the process
as stdin, without a shell. Status is one ``bjobs -a -noheader -o 'jobid:10 stat:10' id...`` call
(``-a`` keeps jobs that finished within CLEAN_PERIOD, one hour by default); bjobs exits non-zero
when some ids are unknown ("Job <N> is not found" on stderr) but still prints the others.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .base import BatchState, CommandError, LauncherError, SubmitError, WorkerSpec, run_command
from .render import TemplatedLauncher, format_hours_minutes, minutes_ceil

logger = logging.getLogger(__name__)

# bjobs STAT values (IBM Spectrum LSF 10.1, bjobs "JOB STATUS").
LSF_STATES: dict[str, BatchState] = {
    "PEND": BatchState.QUEUED,
    "PSUSP": BatchState.QUEUED,  # suspended by its owner or the admin while pending
    "WAIT": BatchState.QUEUED,  # chunk job member waiting to run
    "PROV": BatchState.QUEUED,  # dispatched, waiting for its hosts to be provisioned
    "RUN": BatchState.RUNNING,
    "USUSP": BatchState.RUNNING,  # suspended by the user while running: keeps its slots
    "SSUSP": BatchState.RUNNING,  # suspended by LSF (load, run windows): resumes by itself
    # UNKWN: mbatchd lost contact with the execution host's sbatchd; the job was dispatched and
    # usually comes back as RUN (or ends as EXIT/ZOMBI). It is not "forgotten", so not UNKNOWN.
    "UNKWN": BatchState.RUNNING,
    "DONE": BatchState.DONE,  # finished with exit code 0
    "POST_DONE": BatchState.DONE,
    "EXIT": BatchState.FAILED,  # non-zero exit, killed (bkill, run limit), or failed to start
    "POST_ERR": BatchState.FAILED,  # post-execution processing failed
    "ZOMBI": BatchState.FAILED,  # killed while its host was unreachable; LSF cannot confirm the end
}

_BSUB_ID = re.compile(r"Job <(?P<id>\d+(?:\[\d+\])?)> is submitted to (?:default )?queue <(?P<queue>[^>]*)>")
_NOT_FOUND = re.compile(r"^Job <[^>]+> is not found\.?$")


def lsf_state(stat: str) -> BatchState:
    state = LSF_STATES.get(stat.strip().upper())
    if state is None:
        logger.warning("lsf: unrecognised job state %r, treating it as unknown", stat)
        return BatchState.UNKNOWN
    return state


def parse_bjobs(text: str) -> dict[str, BatchState]:
    """``bjobs -o 'jobid stat' -noheader`` rows, or the default table (``JOBID USER STAT ...``)."""
    states: dict[str, BatchState] = {}
    stat_column = 1
    for line in text.splitlines():
        words = line.split()
        if not words or _NOT_FOUND.match(line.strip()):
            continue
        if words[0] == "JOBID":
            if "STAT" not in words:
                raise LauncherError(f"lsf: bjobs header {line!r} has no STAT column")
            stat_column = words.index("STAT")
            continue
        if len(words) <= stat_column:
            raise LauncherError(f"lsf: cannot parse bjobs line {line!r} (expected '<jobid> <stat>')")
        states[words[0]] = lsf_state(words[stat_column])
    return states


class LSFLauncher(TemplatedLauncher):
    """LSF adapter. ``login_shell`` is bsub's ``-L`` (the shell that initialises the job's env)."""

    name = "lsf"
    template_name = "lsf.sh.j2"
    default_mpi_launch = "mpiexec"

    def __init__(self, *args, queue: str | None = None, login_shell: str = "/bin/sh", **kwargs):
        if queue is not None:
            kwargs.setdefault("partition", queue)
        super().__init__(*args, **kwargs)
        self.login_shell = login_shell

    def template_context(self, spec: WorkerSpec) -> dict:
        if spec.qos:
            raise LauncherError(
                "lsf: LSF has no QOS directive; put the site's equivalent (e.g. -sla) in extra_directives "
                f"(worker {spec.worker_id} asked for qos={spec.qos!r})"
            )
        context = super().template_context(spec)
        return {
            **context,
            "slots": context["nodes"] * context["cores_per_node"],
            "walltime_hhmm": format_hours_minutes(context["walltime_s"]),
            "warning_minutes": minutes_ceil(context["warning_signal_s"]) if context["warning_signal_s"] else 0,
        }

    def submit_argv(self, script_path: Path, spec: WorkerSpec) -> list[str]:
        return ["bsub", "-L", self.login_shell]

    def submit(self, spec: WorkerSpec) -> str:
        """Write the script (kept for the record) and pipe its text to bsub's stdin, no shell."""
        spec.workdir.mkdir(parents=True, exist_ok=True)
        script = spec.workdir / f"{spec.worker_id}.{self.name}.sh"
        text = self.render_script(spec)
        script.write_text(text)
        script.chmod(0o700)
        try:
            out = run_command(self.submit_argv(script, spec), timeout=self.command_timeout_s, input_text=text)
        except CommandError as exc:
            raise SubmitError(f"lsf: submitting {script} failed: {exc}") from exc
        batch_id = self.parse_submit_output(out)
        logger.info("lsf: submitted worker %s as batch job %s", spec.worker_id, batch_id)
        return batch_id

    def parse_submit_output(self, text: str) -> str:
        match = _BSUB_ID.search(text)
        if match is None:
            raise SubmitError(f"lsf: bsub printed {text.strip()!r}, expected 'Job <id> is submitted to queue <q>.'")
        return match.group("id")

    def status_argv(self, batch_ids: list[str]) -> list[str]:
        return ["bjobs", "-a", "-noheader", "-o", "jobid:10 stat:10", *batch_ids]

    def parse_status(self, text: str) -> dict[str, BatchState]:
        return parse_bjobs(text)

    def tolerated_status_output(self, exc: CommandError) -> str | None:
        lines = [line.strip() for line in exc.stderr.splitlines() if line.strip()]
        if lines and all(_NOT_FOUND.match(line) for line in lines):
            return exc.stdout
        return None

    def cancel_argv(self, batch_ids: list[str]) -> list[str]:
        return ["bkill", *batch_ids]

    def cancel_error_is_harmless(self, exc: CommandError) -> bool:
        text = f"{exc.stdout}\n{exc.stderr}"
        return "Job has already finished" in text or "is not found" in text
