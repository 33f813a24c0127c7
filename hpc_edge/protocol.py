"""The wire protocol between a relay (rank 0 of an MPI job) and the control tower.

Messages are small typed records, versioned, encoded with msgpack and validated on receipt. A
malformed message raises ProtocolError naming what is wrong; nothing is ever unpickled.

    hello -> welcome            request -> work | no_work
    update(seq) -> ack(seq)     heartbeat -> ack           bye
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal, NamedTuple, Union

import msgpack
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from .errors import ProtocolError

logger = logging.getLogger(__name__)

VERSION = 3  # 2: ranges and range events are arrays (named tuples), not maps; 3: jobs and job events too
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

JobState = Literal["running", "finished", "failed", "preempted", "cancelled"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class RankInfo(_Record):
    rank: int = Field(ge=0)
    host: str = Field(max_length=255)
    cores: int = Field(ge=1)
    memory_mb: int = Field(ge=0)
    gpus: int = Field(default=0, ge=0)


class JobLimits(NamedTuple):
    """What the node enforces on a running payload (None or 0: no limit)."""

    looping_s: Annotated[float, Field(gt=0)] | None = None
    max_output_mb: Annotated[int, Field(gt=0)] | None = None
    max_workdir_mb: Annotated[int, Field(gt=0)] | None = None
    memory_mb: Annotated[int, Field(ge=0)] = 0
    max_walltime_s: Annotated[float, Field(gt=0)] | None = None
    check_s: Annotated[float, Field(gt=0)] = 10.0


class JobSpec(NamedTuple):
    """One payload to run, as a rank needs it.

    Jobs, ranges and their events are named tuples, not models: each of them is built, sent (a
    msgpack array; a pickle between ranks) and validated on receipt (every field, as a model's) at
    a fraction of a model's cost, and a run of short payloads moves one per payload tower -> relay
    -> rank and back. A wire error names the field (see ``decode``). Their defaults are shared:
    nobody changes a record's ``env`` in place (``_replace`` makes a new record)."""

    job_id: Annotated[int, Field(ge=1)]
    task_id: Annotated[int, Field(ge=1)]
    attempt: Annotated[int, Field(ge=1)]
    dispatch: Annotated[int, Field(ge=1)]
    command: Annotated[str, Field(min_length=1)]
    cores: Annotated[int, Field(ge=1)]
    memory_mb: Annotated[int, Field(ge=0)]
    walltime_s: Annotated[float, Field(gt=0)]
    workdir: str
    env: dict[str, str] = {}
    outputs: tuple[str, ...] = ()
    limits: JobLimits = JobLimits()
    event_service: bool = False
    output_dir: str | None = None  # event service: where finished ranges' outputs are staged out


class RangeSpec(NamedTuple):
    """One event range of an event-service job (ids: task-job-file-range-attempt); a named tuple, as
    JobSpec says: a job of 10^5 one-event ranges moves each one tower -> relay -> rank and back."""

    range_id: Annotated[str, Field(min_length=1, max_length=200)]
    job_id: Annotated[int, Field(ge=1)]
    first_event: Annotated[int, Field(ge=0)]
    last_event: Annotated[int, Field(ge=0)]
    lfn: str = ""
    guid: str = ""
    scope: str = ""


class RangeEvent(NamedTuple):
    """A change of an event range's state on a node (a named tuple: see RangeSpec)."""

    range_id: Annotated[str, Field(min_length=1, max_length=200)]
    job_id: Annotated[int, Field(ge=1)]
    state: Literal["running", "finished", "failed", "preempted"]
    t: float
    rank: int | None = None
    host: str | None = None
    output: Annotated[str, Field(max_length=4096)] | None = None
    size: int | None = None
    cpu_s: float | None = None
    wall_s: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    error_code: int | None = None
    error_diag: Annotated[str, Field(max_length=4096)] | None = None


class FileInfo(NamedTuple):
    """A declared output a payload left: its name in the job's directory, and its size."""

    name: str
    size: Annotated[int, Field(ge=0)]


class JobEvent(NamedTuple):
    """A change of a job's state on a node (a named tuple: see JobSpec)."""

    job_id: Annotated[int, Field(ge=1)]
    dispatch: Annotated[int, Field(ge=1)]
    state: JobState
    t: float
    rank: int | None = None
    host: str | None = None
    pid: int | None = None
    start_time: float | None = None
    end_time: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    error_code: int | None = None
    error_diag: Annotated[str, Field(max_length=4096)] | None = None
    cpu_s: float | None = None
    wall_s: float | None = None
    max_rss_kb: int | None = None
    files: tuple[FileInfo, ...] = ()
    report: dict | None = None  # the payload's jobReport.json


class Command(_Record):
    action: Literal["kill", "drain", "stop"]
    job_ids: list[int] = Field(default_factory=list)
    reason: str = ""


class _Message(_Record):
    v: int = VERSION


class Hello(_Message):
    kind: Literal["hello"] = "hello"
    worker_id: str = Field(min_length=1, max_length=128)
    batch_id: str | None = None
    ranks: list[RankInfo] = Field(min_length=1)
    ends_at: float | None = None
    holding: list[int] = Field(default_factory=list)
    holding_ranges: list[str] = Field(default_factory=list)
    last_seq: int = Field(default=0, ge=0)
    last_req: int = Field(default=0, ge=0)


class Welcome(_Message):
    kind: Literal["welcome"] = "welcome"
    worker_id: str
    heartbeat_s: float
    lost_after_s: float | None = None  # the tower gives the worker up after this long without a word
    last_seq: int = Field(default=0, ge=0)
    release: list[int] = Field(default_factory=list)


class Request(_Message):
    kind: Literal["request"] = "request"
    req: int = Field(ge=0)
    cores: int = Field(ge=0)
    max_job_cores: int = Field(ge=1)
    max_job_memory_mb: int = Field(ge=0)
    remaining_s: float | None = None
    ranges: int = Field(default=0, ge=0)
    # free cores of each rank that the relay's own buffer cannot fill: the tower fills each with jobs
    # that fit it (first fit in its order); ``cores`` counts them too, the rest is prefetch
    holes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list, max_length=65536)


class Work(_Message):
    kind: Literal["work"] = "work"
    req: int
    jobs: list[JobSpec] = Field(default_factory=list)
    ranges: list[RangeSpec] = Field(default_factory=list)
    es_jobs: list[JobSpec] = Field(default_factory=list)  # the jobs the ranges belong to
    exhausted: list[int] = Field(default_factory=list)    # event-service jobs with no ready range left
    ranges_ready: bool = False                            # whether the tower has ranges to give
    jobs_ready: bool = True                               # and jobs


class NoWork(_Message):
    kind: Literal["no_work"] = "no_work"
    req: int
    retry_s: float = 1.0
    drain: bool = False
    exhausted: list[int] = Field(default_factory=list)
    ranges_ready: bool = False
    jobs_ready: bool = False


class Update(_Message):
    kind: Literal["update"] = "update"
    seq: int = Field(ge=1)
    events: list[JobEvent] = Field(default_factory=list)
    ranges: list[RangeEvent] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self):
        if not self.events and not self.ranges:
            raise ValueError("an update carries job or range events")
        return self


class Ack(_Message):
    kind: Literal["ack"] = "ack"
    seq: int = Field(default=0, ge=0)
    commands: list[Command] = Field(default_factory=list)


class Heartbeat(_Message):
    kind: Literal["heartbeat"] = "heartbeat"
    running: int = Field(default=0, ge=0)
    last_seq: int = Field(default=0, ge=0)


class Bye(_Message):
    kind: Literal["bye"] = "bye"
    reason: str = ""


class Reject(_Message):
    """The tower's answer to a message it could not accept."""

    kind: Literal["reject"] = "reject"
    error: str


Message = Annotated[
    Union[Hello, Welcome, Request, Work, NoWork, Update, Ack, Heartbeat, Bye, Reject],
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter = TypeAdapter(Message)


def drop_superseded(events: list) -> list:
    """Without the 'running' events of the jobs and ranges whose end is in the same list: the end
    carries the start (start_time, pid), so nobody downstream needs both. A rank's reports, and the
    relay's updates, shrink by about half when payloads are short."""
    def key(e):
        return (e.job_id, e.dispatch) if type(e) is JobEvent else e.range_id

    ended = {key(e) for e in events if e.state != "running"}
    if not ended:
        return events
    return [e for e in events if e.state != "running" or key(e) not in ended]


def encode(message: _Message) -> bytes:
    return msgpack.packb(message.model_dump(exclude_defaults=False), use_bin_type=True)


# the records sent as arrays, by the message field that holds a list of them; and their own
# fields that hold records
_ARRAYS = {("work", "jobs"): JobSpec, ("work", "es_jobs"): JobSpec, ("work", "ranges"): RangeSpec,
           ("update", "events"): JobEvent, ("update", "ranges"): RangeEvent}
_NESTED = {(JobSpec, "limits"): (JobLimits, False), (JobEvent, "files"): (FileInfo, True)}


def _where(loc: tuple) -> str:
    """A validation error's location, dotted; a record's field by its name, not its place in the array
    (``work.jobs.3.limits.check_s``, not ``work.jobs.3.11.5``)."""
    parts = [str(x) for x in loc]
    record = _ARRAYS.get(tuple(loc[:2]))
    i = 3  # after the message's kind, its field and the record's index
    while record is not None and i < len(loc) and type(loc[i]) is int and loc[i] < len(record._fields):
        name = record._fields[loc[i]]
        parts[i] = name
        record, many = _NESTED.get((record, name), (None, False))
        i += 2 if many else 1  # a list of records: past its index
    return ".".join(parts)


def decode(data: bytes) -> _Message:
    """Bytes to a validated message; ProtocolError names what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: every decoder failure is a rejection

        raise ProtocolError(f"not a msgpack record: {exc}") from exc
    if not isinstance(raw, dict):
        raise ProtocolError(f"message must be a map, got {type(raw).__name__}")
    version, kind = raw.get("v"), raw.get("kind")
    if type(version) is not int:
        raise ProtocolError(f"protocol version 'v' must be the integer {VERSION}, got {type(version).__name__}")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    kind = kind[:32] if isinstance(kind, str) else "?"
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _where(first["loc"])[:200]
        raise ProtocolError(f"invalid {kind} message: {where}: {first['msg'][:300]}") from exc
    except RecursionError as exc:
        raise ProtocolError(f"invalid {kind} message: nested too deeply") from exc
