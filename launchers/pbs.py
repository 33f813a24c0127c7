"""PBS (OpenPBS / PBS Professional, Torque, and Slurm's slurm-wlm-torque wrappers): qsub, qstat, qdel.

``flavor`` chooses the resource syntax and the status command:

- ``openpbs``: ``-l select=N:ncpus=..:mpiprocs=..``; status ``qstat -x -f <ids>`` (``-x`` keeps
  finished jobs, state F, with ``Exit_status``);
- ``torque``: ``-l nodes=N:ppn=..``; status ``qstat -f <ids>`` (Torque keeps completed jobs in state C
  with ``exit_status`` for ``keep_completed`` seconds; its ``-x`` means XML). Slurm's
  slurm-wlm-torque ``qstat`` understands the same call and prints the same layout with tabs.

:func:`parse_qstat` reads both real output formats: ``qstat -f`` blocks (``Job Id: <id>`` followed by
``key = value`` lines, continuation lines indented by a tab) and the plain ``qstat`` table
(``Job ID  Name  User  Time Use S Queue`` with a dashed underline), whatever the flavor.
``qstat -F json`` exists only in OpenPBS and is not needed.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .base import BatchState, CommandError, LauncherError, SubmitError, WorkerSpec
from .render import TemplatedLauncher

logger = logging.getLogger(__name__)

# One-letter job states (qstat(1B) of OpenPBS 2022 and Torque 6; "U" from slurm-wlm-torque means
# "unknown"). C/F/X are terminal and are refined by the exit status when qstat -f gives one.
PBS_STATES: dict[str, BatchState] = {
    "Q": BatchState.QUEUED,  # queued, eligible to run or be routed
    "H": BatchState.QUEUED,  # held
    "W": BatchState.QUEUED,  # waiting for its execution time (or a failed stage-in)
    "T": BatchState.QUEUED,  # in transit to a new location
    "R": BatchState.RUNNING,
    "E": BatchState.RUNNING,  # exiting after having run: not over until C/F
    "S": BatchState.RUNNING,  # suspended by the server (keeps its place, as Slurm SUSPENDED)
    "U": BatchState.UNKNOWN,  # slurm-wlm-torque: a Slurm state it cannot name (OOM, DEADLINE)
    "B": BatchState.RUNNING,  # array job: at least one subjob has begun
    "C": BatchState.DONE,  # Torque: completed (exit_status refines it)
    "F": BatchState.DONE,  # OpenPBS: finished (Exit_status refines it)
    "X": BatchState.DONE,  # OpenPBS: subjob finished
    "M": BatchState.UNKNOWN,  # moved to another server: this one no longer tracks it
}

# OpenPBS letters that mean something else there: U is a cycle-harvesting job suspended by keyboard
# activity, which resumes by itself (Torque has no U).
OPENPBS_STATES: dict[str, BatchState] = {**PBS_STATES, "U": BatchState.RUNNING}

_QSUB_ID = re.compile(r"^\d+(?:\[\d*\])?(?:\.[\w.\-]+)?$")
_JOB_ID_LINE = re.compile(r"^Job Id:\s*(?P<id>\S+)\s*$")
_ATTRIBUTE = re.compile(r"^\s+(?P<key>[\w.]+) =(?: (?P<value>.*))?$")


def pbs_state(letter: str, exit_status: str | None = None, flavor: str = "torque") -> BatchState:
    """Map a one-letter state, refined by the exit status for ended jobs (pure)."""
    table = OPENPBS_STATES if flavor == "openpbs" else PBS_STATES
    state = table.get(letter.strip().upper())
    if state is None:
        logger.warning("pbs: unrecognised job state %r, treating it as unknown", letter)
        return BatchState.UNKNOWN
    if state is BatchState.DONE and exit_status is not None:
        try:
            code = int(exit_status.strip())
        except ValueError:
            logger.warning("pbs: unparsable exit status %r", exit_status)
            return BatchState.FAILED
        # 0: success. Negative: Torque/OpenPBS could not run the job (JOB_EXEC_*). >256: killed by a
        # signal (256+signo, e.g. 271 = SIGTERM from qdel or the walltime). Anything else: the script's.
        return BatchState.DONE if code == 0 else BatchState.FAILED
    return state


def parse_qstat_full(text: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` output to ``{job id: {attribute: value}}``.

    Attributes are indented ``key = value`` lines (four spaces in Torque and OpenPBS, a tab in
    slurm-wlm-torque); a long value wraps onto lines that start with a tab, and some (``sched_hint``)
    even onto unindented or blank lines: anything that is not a new attribute continues the last one.
    """
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key: str | None = None
    for line in text.splitlines():
        head = _JOB_ID_LINE.match(line)
        if head:
            current = jobs.setdefault(head.group("id"), {})
            last_key = None
            continue
        if current is None or not line.strip():
            continue
        attr = _ATTRIBUTE.match(line)
        if attr:
            last_key = attr.group("key")
            current[last_key] = (attr.group("value") or "").strip()
        elif last_key is not None:
            current[last_key] += line.strip()
    return jobs


def parse_qstat_table(text: str) -> dict[str, str]:
    """Plain ``qstat`` output (header, dashed underline, one row per job) to ``{job id: letter}``.

    Columns are cut at the positions of the dashed underline (names may hold spaces in the
    slurm-wlm-torque wrapper); the state is the column headed ``S``.
    """
    lines = text.splitlines()
    for index, underline in enumerate(lines):
        if re.match(r"^\s*-+(\s+-+)+\s*$", underline):
            break
    else:
        raise LauncherError(f"pbs: qstat output has no dashed header underline: {text[:200]!r}")
    header = lines[index - 1] if index else ""
    starts = [m.start() for m in re.finditer(r"-+", underline)]
    bounds = list(zip(starts, [*starts[1:], None]))
    names = [header[a:b].strip() for a, b in bounds]
    if "S" not in names:
        raise LauncherError(f"pbs: qstat header {header!r} has no 'S' (state) column")
    state_column = names.index("S")
    states: dict[str, str] = {}
    for row in lines[index + 1:]:
        if not row.strip():
            continue
        fields = [row[a:b].strip() for a, b in bounds]
        if not fields[0] or not fields[state_column]:
            raise LauncherError(f"pbs: cannot parse qstat row {row!r} against header {header!r}")
        states[fields[0]] = fields[state_column]
    return states


def parse_qstat(text: str, flavor: str = "torque") -> dict[str, BatchState]:
    """Either qstat format to states (pure)."""
    if re.search(r"^Job Id:", text, re.M):
        return {
            job_id: pbs_state(attrs.get("job_state", "?"), attrs.get("exit_status", attrs.get("Exit_status")), flavor)
            for job_id, attrs in parse_qstat_full(text).items()
        }
    if not text.strip():
        return {}
    return {job_id: pbs_state(letter, None, flavor) for job_id, letter in parse_qstat_table(text).items()}


def sequence_number(job_id: str) -> str:
    """``123.server`` -> ``123`` (qstat may print a longer or shorter server suffix than qsub did)."""
    return job_id.split(".", 1)[0]


class PBSLauncher(TemplatedLauncher):
    """PBS adapter; ``flavor`` is ``openpbs`` or ``torque`` (also right for slurm-wlm-torque)."""

    name = "pbs"
    template_name = "pbs.sh.j2"
    default_mpi_launch = "mpiexec"

    def __init__(self, *args, flavor: str = "openpbs", queue: str | None = None, **kwargs):
        if queue is not None:
            kwargs.setdefault("partition", queue)
        super().__init__(*args, **kwargs)
        if flavor not in ("openpbs", "torque"):
            raise LauncherError(f"pbs: flavor must be openpbs|torque, got {flavor!r}")
        self.flavor = flavor

    def template_context(self, spec: WorkerSpec) -> dict:
        if spec.qos:
            raise LauncherError(
                "pbs: PBS has no QOS directive; put the site's equivalent in extra_directives "
                f"(worker {spec.worker_id} asked for qos={spec.qos!r})"
            )
        return {**super().template_context(spec), "flavor": self.flavor}

    def submit_argv(self, script_path: Path, spec: WorkerSpec) -> list[str]:
        # -o/-e on the command line too: slurm-wlm-torque's qsub otherwise passes its own
        # "-o <script>.o%A" to sbatch, overriding the script's #PBS lines.
        return ["qsub", "-o", str(spec.stdout_path), "-e", str(spec.stderr_path), str(script_path)]

    def parse_submit_output(self, text: str) -> str:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines or not _QSUB_ID.match(lines[-1]):
            raise SubmitError(f"pbs: qsub printed {text.strip()!r}, expected a job id like '123.server'")
        return lines[-1]

    def status_argv(self, batch_ids: list[str]) -> list[str]:
        if self.flavor == "openpbs":
            return ["qstat", "-x", "-f", *batch_ids]
        return ["qstat", "-f", *batch_ids]

    def parse_status(self, text: str) -> dict[str, BatchState]:
        return parse_qstat(text, self.flavor)

    def match_state(self, states: dict[str, BatchState], batch_id: str) -> BatchState:
        if batch_id in states:
            return states[batch_id]
        wanted = sequence_number(batch_id)
        matches = [state for job_id, state in states.items() if sequence_number(job_id) == wanted]
        return matches[0] if len(matches) == 1 else BatchState.UNKNOWN

    def tolerated_status_output(self, exc: CommandError) -> str | None:
        # Torque exits 153 ("Unknown Job Id") and OpenPBS 35 when some ids are gone, still printing
        # the others; slurm-wlm-torque's qstat exits 153 with no output when none of the ids match.
        if exc.returncode in (153, 35) or "Unknown Job Id" in exc.stderr:
            return exc.stdout
        return None

    def cancel_argv(self, batch_ids: list[str]) -> list[str]:
        return ["qdel", *batch_ids]

    def cancel_error_is_harmless(self, exc: CommandError) -> bool:
        # Deleting a job that already finished: "Unknown Job Id" / "Job has finished" (OpenPBS 35),
        # or slurm-wlm-torque's qdel exiting with the count of jobs it could not kill, silently.
        text = f"{exc.stdout}\n{exc.stderr}"
        return "Unknown Job Id" in text or "has finished" in text or (exc.returncode > 0 and not text.strip())
