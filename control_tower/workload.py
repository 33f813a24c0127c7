"""Workload files: YAML describing tasks, validated with pydantic, expanded into jobs.

A typo is an error that names the key, the file and the line. Commands may use the placeholders
``{index}``, ``{inputs}``, ``{job_id}``, ``{attempt}`` and ``{task}``; ``{index}`` and ``{inputs}``
are fixed when a task is expanded, ``{job_id}`` and ``{attempt}`` when a job is dispatched.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PLACEHOLDERS = ("index", "inputs", "job_id", "attempt", "task", "workload_dir")
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{2})$|^(\d+(?:\.\d+)?)\s*([smhd]?)$")


class WorkloadError(ValueError):
    """A workload file is malformed; the message names the file, the line and the key."""


def parse_duration(value: Any) -> float:
    """Seconds from 90, "90", "90s", "30m", "2h", "1d", "01:30:00" or "30:00"."""
    if isinstance(value, bool):
        raise ValueError("a duration must be seconds or a string like 30m or 01:30:00")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise ValueError(f"{value!r} is not a duration (use seconds, 30m, 2h or HH:MM:SS)")
        if m.group(4) is not None:
            seconds = float(m.group(4)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(5)]
        else:
            minutes, secs = int(m.group(2)), int(m.group(3))
            if secs >= 60 or (m.group(1) is not None and minutes >= 60):
                raise ValueError(f"{value!r} is not a valid HH:MM:SS or MM:SS duration")
            seconds = int(m.group(1) or 0) * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("a duration must be a positive, finite number of seconds")
    return seconds


def check_relative_path(name: str) -> str:
    """An output name must stay inside the job's directory."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\x00" in name:
        raise ValueError(f"output {name!r} must be a relative path inside the job's directory")
    return name


class EventFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    events: int = Field(ge=1)
    guid: str = ""
    scope: str = ""


RETRY_CLASSES = {
    "exit": 1001, "signal": 1002, "start": 1003, "looping": 1005, "output_size": 1006, "disk": 1007,
    "memory": 1008, "reported": 1009, "missing_output": 1010, "empty_output": 1011, "walltime": 1012,
    "stageout": 1050,
}


class InputFile(BaseModel):
    """An input with the walltime its job is expected to take for it (a user's or a scout job's guess)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    walltime: float = Field(description="expected walltime this input adds to its job")

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v):
        return parse_duration(v)


class TaskLimits(BaseModel):
    """What the node enforces on each running payload of the task."""

    model_config = ConfigDict(extra="forbid")

    looping: float | None = Field(default=None, description="kill after this long with no CPU and no output")
    max_output_mb: int | None = Field(default=None, gt=0, description="stdout + stderr")
    max_workdir_mb: int | None = Field(default=None, gt=0)
    memory_mb: int = Field(default=0, ge=0, description="RSS of the payload's process tree; 0: none")
    max_walltime: float | None = Field(default=None, gt=0,
                                       description="kill a payload still running this long after its start")
    check_every: float = Field(default=10.0, description="seconds between checks")

    @field_validator("looping", "max_walltime", "check_every", mode="before")
    @classmethod
    def _durations(cls, v):
        return None if v is None else parse_duration(v)


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    command: str = Field(min_length=1)
    count: int | None = Field(default=None, ge=1, le=100_000_000)
    inputs: list[str | InputFile] | None = Field(
        default=None, min_length=1,
        description="one name per input, or {name, walltime}: jobs with the longest expected walltime go first")
    files_per_job: int = Field(default=1, ge=1)
    cores: int = Field(default=1, ge=1, le=4096)
    memory_mb: int = Field(default=0, ge=0)
    walltime: float = Field(default=3600.0, description="walltime estimate of one job")
    env: dict[str, str] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    max_attempts: int = Field(default=3, ge=1, le=100)
    retry_on: list[str] | None = Field(default=None, description="failure classes that are retried; none: all")
    retry_backoff: float = Field(default=0.0, ge=0, description="seconds before a failed job is tried again")
    limits: TaskLimits = Field(default_factory=TaskLimits)
    priority: int = 0
    workload_dir: str | None = Field(default=None, description="{workload_dir}; default: the file's directory")
    event_service: bool = False
    events: int | None = Field(default=None, ge=1, le=10_000_000_000)
    events_per_range: int = Field(default=1, ge=1)
    events_per_job: int | None = Field(default=None, ge=1)
    files: list[EventFile] | None = Field(default=None, min_length=1)

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime(cls, v):
        return parse_duration(v)

    @field_validator("retry_backoff", mode="before")
    @classmethod
    def _backoff(cls, v):
        return 0.0 if v in (0, "0", "0s") else parse_duration(v)

    @field_validator("retry_on")
    @classmethod
    def _retry_classes(cls, v):
        for name in v or ():
            if name not in RETRY_CLASSES:
                raise ValueError(f"unknown failure class {name!r} (known: {', '.join(sorted(RETRY_CLASSES))})")
        return v

    def retries(self, error_code: int | None) -> bool:
        """Whether a failure with this code is retried (attempts permitting)."""
        if self.retry_on is None:
            return True
        return error_code in {RETRY_CLASSES[name] for name in self.retry_on}

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v):
        return [check_relative_path(name) for name in v]

    @field_validator("command")
    @classmethod
    def _placeholders(cls, v):
        unknown = sorted({m for m in _PLACEHOLDER.findall(v) if m not in PLACEHOLDERS})
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} (known: "
                             + ", ".join("{%s}" % p for p in PLACEHOLDERS) + ")")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v):
        for key in v:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"environment variable name {key!r} is not valid")
        return v

    @model_validator(mode="after")
    def _count_or_inputs(self):
        if self.event_service:
            if (self.events is None) == (self.files is None):
                raise ValueError("an event-service task gives exactly one of 'events' or 'files'")
            if self.count is not None or self.inputs is not None:
                raise ValueError("an event-service task is sized by 'events' or 'files', not 'count' or 'inputs'")
            if self.files is not None and self.events_per_job is not None:
                raise ValueError("with 'files' each file is one job: 'events_per_job' does not apply")
        else:
            if (self.count is None) == (self.inputs is None):
                raise ValueError("give exactly one of 'count' or 'inputs'")
            for key in ("events", "events_per_job", "files"):
                if getattr(self, key) is not None:
                    raise ValueError(f"'{key}' needs event_service: true")
        return self

    @model_validator(mode="after")
    def _input_walltimes(self):
        """With a walltime on every input, a job's estimate is the sum over its inputs, and the task's
        (used to match jobs to the time a worker has left) is the longest job's unless given."""
        if self.inputs is not None and any(isinstance(i, InputFile) for i in self.inputs):
            if not all(isinstance(i, InputFile) for i in self.inputs):
                raise ValueError("give a walltime for every input or for none")
            if "walltime" not in self.model_fields_set:
                self.walltime = max(self.job_walltime(i) for i in range(self.n_jobs))
        return self

    @property
    def ranked_inputs(self) -> bool:
        """Whether the inputs carry walltimes (and the jobs go out longest first)."""
        return self.inputs is not None and isinstance(self.inputs[0], InputFile)

    def job_walltime(self, index: int) -> float:
        """The expected walltime of job ``index``: its inputs' sum, or the task's."""
        if not self.ranked_inputs:
            return self.walltime
        return sum(i.walltime for i in self.inputs[index * self.files_per_job:(index + 1) * self.files_per_job])

    @property
    def n_jobs(self) -> int:
        if self.event_service:
            if self.files is not None:
                return len(self.files)
            return math.ceil(self.events / (self.events_per_job or self.events))
        if self.count is not None:
            return self.count
        return math.ceil(len(self.inputs) / self.files_per_job)

    def job_inputs(self, index: int) -> list[str] | None:
        if self.event_service:
            return [self.files[index].name] if self.files is not None else None
        if self.inputs is None:
            return None
        return [i if isinstance(i, str) else i.name
                for i in self.inputs[index * self.files_per_job:(index + 1) * self.files_per_job]]

    def job_grid(self, index: int) -> RangeGrid:
        """The ranges of event-service job ``index``: (file index, first event, last event) by range index."""
        if self.files is not None:
            return RangeGrid(index, 0, self.files[index].events - 1, self.events_per_range)
        per_job = self.events_per_job or self.events
        return RangeGrid(0, index * per_job, min(self.events, (index + 1) * per_job) - 1, self.events_per_range)

    def job_ranges(self, index: int):
        """(file index, lfn, guid, scope, first event, last event) of each range of job ``index``."""
        f = self.files[index] if self.files is not None else None
        lfn, guid, scope = (f.name, f.guid, f.scope) if f else ("", "", "")
        for file_idx, first, last in self.job_grid(index):
            yield file_idx, lfn, guid, scope, first, last


class Workload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="workload", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    tasks: list[TaskSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self):
        seen = set()
        for task in self.tasks:
            if task.name in seen:
                raise ValueError(f"two tasks are named {task.name!r}")
            seen.add(task.name)
        return self


@dataclass(frozen=True)
class RangeGrid:
    """The ranges of one event-service job: events ``first..last`` of one file in steps of ``step``.

    Range ``n`` is (file index, first + n * step, its last event): a job of a million ranges costs
    four integers, not a million tuples. Iterating gives each range in index (= event) order."""

    file_idx: int
    first: int
    last: int
    step: int

    def __len__(self) -> int:
        return (self.last - self.first) // self.step + 1

    def events(self, n: int) -> tuple[int, int]:
        """First and last event of range ``n``."""
        first = self.first + n * self.step
        return first, min(self.last, first + self.step - 1)

    def __iter__(self):
        for n in range(len(self)):
            yield self.file_idx, *self.events(n)


@dataclass(frozen=True)
class JobTemplate:
    """What a job adds to its task: its index and its inputs."""

    index: int
    inputs: list[str] | None


def expand(task: TaskSpec):
    """The jobs of a task in the order they are handed out: index order (a generator: millions of
    jobs stay cheap), or the longest expected walltime first when the inputs give walltimes (longest
    processing time first: the long jobs start early and the short ones fill the end)."""
    indices = range(task.n_jobs)
    if task.ranked_inputs:
        indices = sorted(indices, key=lambda i: -task.job_walltime(i))
    for index in indices:
        yield JobTemplate(index, task.job_inputs(index))


def has_placeholders(template: str) -> bool:
    """Whether render_command would change this template (a command without one is the same for every job)."""
    return _PLACEHOLDER.search(template) is not None


def render_command(template: str, *, index: int, inputs: list[str] | None, job_id: int, attempt: int,
                   task: str, workload_dir: str | None = None) -> str:
    values = {"index": str(index), "inputs": " ".join(shlex.quote(i) for i in inputs or ()),
              "job_id": str(job_id), "attempt": str(attempt), "task": task,
              "workload_dir": shlex.quote(workload_dir or ".")}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def _key_lines(node, path=(), out=None) -> dict[tuple, int]:
    """Line number (1-based) of every key and item in a composed YAML tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = path + (key.value,)
            out[sub] = key.start_mark.line + 1
            _key_lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _key_lines(item, path + (i,), out)
    return out


def parse_workload(text: str, source: str = "<workload>", workload_dir: str | None = None) -> Workload:
    """Validate a workload's YAML text; WorkloadError names source, line and key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise WorkloadError(f"{source}: a workload is a mapping with a 'tasks' list")
    try:
        workload = Workload.model_validate(data)
    except ValidationError as exc:
        raise WorkloadError(format_validation_error(exc, source, _key_lines(node))) from exc
    for task in workload.tasks:
        if task.workload_dir is None and workload_dir is not None:
            task.workload_dir = workload_dir
    return workload


def format_validation_error(exc: ValidationError, source: str, lines: dict[tuple, int]) -> str:
    messages = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        messages.append(f"{source}:{line or '?'}: {where}: {msg}")
    return "\n".join(messages)


def load_workload(path: str | Path) -> Workload:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise WorkloadError(f"{path}: not a text (UTF-8) file: {exc.reason} at byte {exc.start}") from exc
    return parse_workload(text, str(path), str(path.resolve().parent))
