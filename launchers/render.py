"""Strict, site-overridable rendering of batch scripts (shared by the slurm, pbs and lsf adapters).

Templates are Jinja2 files shipped in ``launchers/templates/``; a site may pass a ``template_dir``
that is searched first, so ``<site>/slurm.sh.j2`` replaces the package's. Rendering uses
``StrictUndefined``: a template naming a variable the adapter does not provide is an error that names
the template and the variable, never a silently empty directive.

Everything a template prints is prepared here, in Python: counts are validated integers (``2``, never
``2.0``), the walltime is ``HH:MM:SS`` from :func:`launchers.base.format_walltime`, environment values
and command words are shell-quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
from pathlib import Path
from typing import Any

from dataclasses import replace

import jinja2

from .base import (
    BatchState,
    CancelError,
    CommandError,
    LauncherError,
    ScriptLauncher,
    StatusError,
    WorkerSpec,
    format_walltime,
    run_command,
)

logger = logging.getLogger(__name__)

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def make_environment(template_dir: str | Path | None = None) -> jinja2.Environment:
    """A Jinja2 environment: the site directory (if any) first, then the package's templates."""
    search = [str(PACKAGE_TEMPLATES)]
    if template_dir is not None:
        site = Path(template_dir)
        if not site.is_dir():
            raise LauncherError(f"site template directory {site} does not exist or is not a directory")
        search.insert(0, str(site))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["quote"] = lambda value: shlex.quote(str(value))
    return env


def render_template(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    """Render ``name`` with ``context``; any template problem becomes a LauncherError saying where."""
    try:
        template = env.get_template(name)
    except jinja2.TemplateNotFound as exc:
        raise LauncherError(f"batch script template {name!r} not found in {env.loader.searchpath}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise LauncherError(f"syntax error in template {exc.filename}:{exc.lineno}: {exc.message}") from exc
    try:
        return template.render(**context)
    except jinja2.UndefinedError as exc:
        raise LauncherError(
            f"template {template.filename} uses a variable the launcher does not provide: {exc.message}"
            f" (available: {', '.join(sorted(context))})"
        ) from exc
    except jinja2.TemplateError as exc:
        raise LauncherError(f"rendering template {template.filename} failed: {exc}") from exc


def as_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= minimum; integral floats (2.0) become ints, anything else is an error."""
    if isinstance(value, bool):
        raise LauncherError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise LauncherError(f"{name} must be a whole number, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise LauncherError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise LauncherError(f"{name} must be >= {minimum}, got {value}")
    return value


def directive_value(name: str, value: Any) -> str:
    """A value printed inside a ``#SBATCH``/``#PBS``/``#BSUB`` line: one word, no line breaks."""
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise LauncherError(f"{name} {text!r} cannot go into a batch directive (empty or contains whitespace)")
    return text


def env_exports(env: dict[str, str]) -> list[str]:
    """``NAME=value`` words for ``export``, each value shell-quoted; a bad name is an error."""
    exports = []
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise LauncherError(f"environment variable name {key!r} is not a valid shell identifier")
        exports.append(f"{key}={shlex.quote(str(value))}")
    return exports


def minutes_ceil(seconds: int | float) -> int:
    """Whole minutes covering ``seconds`` (LSF counts in minutes; round up so nothing is cut short)."""
    return max(1, math.ceil(seconds / 60))


def format_hours_minutes(seconds: int | float) -> str:
    """``[H]H:MM`` as LSF's ``-W`` wants it (5400 s -> ``1:30``; partial minutes round up)."""
    format_walltime(seconds)  # same validation as everywhere: positive
    hours, minutes = divmod(minutes_ceil(seconds), 60)
    return f"{hours}:{minutes:02d}"


def script_context(spec: WorkerSpec, system: str, default_mpi_launch: str) -> dict[str, Any]:
    """Everything the three batch templates may use, validated and formatted (pure)."""
    nodes = as_count("nodes", spec.nodes, 1)
    ranks_per_node = as_count("ranks_per_node", spec.ranks_per_node, 1)
    cores_per_rank = as_count("cores_per_rank", spec.cores_per_rank, 1)
    gpus_per_node = as_count("gpus_per_node", spec.gpus_per_node, 0)
    warning_s = as_count("warning_signal_s", spec.warning_signal_s, 0)
    walltime_s = as_count("walltime_s", spec.walltime_s, 1)
    if not spec.command:
        raise LauncherError(f"worker {spec.worker_id}: empty command")
    mpi_launch = (spec.mpi_launch or default_mpi_launch).strip()
    if not mpi_launch or "\n" in mpi_launch:
        raise LauncherError(f"worker {spec.worker_id}: mpi_launch {spec.mpi_launch!r} is not one command line")
    for line in spec.setup_lines:
        if "\n" in line:
            raise LauncherError(f"setup line {line!r} contains a line break; give one line per entry")
    for line in spec.extra_directives:
        if "\n" in line:
            raise LauncherError(f"extra directive {line!r} contains a line break")
    workdir = Path(spec.workdir)
    return {
        "system": system,
        "worker_id": directive_value("worker_id", spec.worker_id),
        "job_name": directive_value("job_name", spec.job_name),
        "workdir": shlex.quote(str(workdir)),
        "stdout": directive_value("stdout path", workdir / f"{spec.worker_id}.out"),
        "stderr": directive_value("stderr path", workdir / f"{spec.worker_id}.err"),
        "nodes": nodes,
        "ranks_per_node": ranks_per_node,
        "ranks": nodes * ranks_per_node,
        "cores_per_rank": cores_per_rank,
        "cores_per_node": ranks_per_node * cores_per_rank,
        "gpus_per_node": gpus_per_node,
        "walltime": format_walltime(walltime_s),
        "walltime_s": walltime_s,
        "account": directive_value("account", spec.account) if spec.account else None,
        "partition": directive_value("partition/queue", spec.partition) if spec.partition else None,
        "qos": directive_value("qos", spec.qos) if spec.qos else None,
        "env_exports": env_exports(spec.env),
        "setup_lines": list(spec.setup_lines),
        "extra_directives": list(spec.extra_directives),
        "mpi_launch": mpi_launch,
        "mpi_launch_is_srun": shlex.split(mpi_launch)[0].rsplit("/", 1)[-1] == "srun",
        "command": shlex.join(str(word) for word in spec.command),
        "warning_signal_s": warning_s,
        "warning_signal": "USR1",
    }


class TemplatedLauncher(ScriptLauncher):
    """A ScriptLauncher whose script is a strict Jinja2 template, with site defaults.

    Constructor options are the site's defaults; a WorkerSpec's own values win (``setup_lines`` and
    ``extra_directives`` are the site's followed by the spec's, ``env`` is merged with the spec's
    values on top). No I/O happens here: templates are read when a script is rendered.
    """

    default_mpi_launch = "mpiexec"

    def __init__(
        self,
        template_dir: str | Path | None = None,
        account: str | None = None,
        partition: str | None = None,
        qos: str | None = None,
        mpi_launch: str | None = None,
        setup_lines: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        extra_directives: list[str] | tuple[str, ...] = (),
        command_timeout_s: float = 60.0,
    ):
        self.template_dir = Path(template_dir) if template_dir is not None else None
        self.account = account
        self.partition = partition
        self.qos = qos
        self.mpi_launch = mpi_launch
        self.setup_lines = list(setup_lines)
        self.env = dict(env or {})
        self.extra_directives = list(extra_directives)
        self.command_timeout_s = command_timeout_s
        self._jinja: jinja2.Environment | None = None
        self._cancel_requested: set[str] = set()

    # -- rendering -----------------------------------------------------------------------------

    def effective_spec(self, spec: WorkerSpec) -> WorkerSpec:
        """The spec with the site's defaults filled in (pure; the caller's spec is not modified)."""
        return replace(
            spec,
            account=spec.account or self.account,
            partition=spec.partition or self.partition,
            qos=spec.qos or self.qos,
            mpi_launch=spec.mpi_launch or self.mpi_launch,
            setup_lines=[*self.setup_lines, *spec.setup_lines],
            env={**self.env, **spec.env},
            extra_directives=[*self.extra_directives, *spec.extra_directives],
        )

    def template_context(self, spec: WorkerSpec) -> dict[str, Any]:
        """The variables the template sees; subclasses add their system's own."""
        return script_context(spec, self.name, self.default_mpi_launch)

    def render_script(self, spec: WorkerSpec) -> str:
        if self._jinja is None:
            self._jinja = make_environment(self.template_dir)
        return render_template(self._jinja, self.template_name, self.template_context(self.effective_spec(spec)))

    # -- status and cancel ---------------------------------------------------------------------

    def tolerated_status_output(self, exc: CommandError) -> str | None:
        """Output to parse anyway when the status command failed only because some ids are unknown."""
        return None

    def match_state(self, states: dict[str, BatchState], batch_id: str) -> BatchState:
        return states.get(batch_id, BatchState.UNKNOWN)

    def status(self, batch_ids: list[str]) -> dict[str, BatchState]:
        if not batch_ids:
            return {}
        try:
            out = run_command(self.status_argv(batch_ids), timeout=self.command_timeout_s)
        except CommandError as exc:
            out = self.tolerated_status_output(exc)
            if out is None:
                raise StatusError(f"{self.name}: status query failed: {exc}") from exc
        states = self.parse_status(out)
        return self.remember_cancels({bid: self.match_state(states, bid) for bid in batch_ids})

    def remember_cancels(self, states: dict[str, BatchState]) -> dict[str, BatchState]:
        """A job we asked to cancel that has ended is CANCELLED, whatever exit the system reports.

        PBS reports a deleted job as completed (C/F with some exit status) and LSF as EXIT, and the
        slurm-wlm-torque qstat shows every ended job as C; only the launcher knows it asked.
        """
        return {
            bid: BatchState.CANCELLED
            if bid in self._cancel_requested and state in (BatchState.DONE, BatchState.FAILED)
            else state
            for bid, state in states.items()
        }

    def cancel(self, batch_ids: list[str]) -> None:
        if not batch_ids:
            return
        self._cancel_requested.update(batch_ids)
        try:
            run_command(self.cancel_argv(batch_ids), timeout=self.command_timeout_s)
        except CommandError as exc:
            if not self.cancel_error_is_harmless(exc):
                raise CancelError(f"{self.name}: cancel of {batch_ids} failed: {exc}") from exc
            logger.info("%s: cancel of %s: %s (already ended)", self.name, batch_ids, exc)

    def cancel_error_is_harmless(self, exc: CommandError) -> bool:
        """True if the cancel command failed only because the jobs had already ended."""
        return False
