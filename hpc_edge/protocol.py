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

VERSION = 2  # 2: ranges and range events are arrays (named tuples), not maps
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


class JobLimits(_Record):
    """What the node enforces on a running payload (None or 0: no limit)."""

    looping_s: float | None = Field(default=None, gt=0)
    max_output_mb: int | None = Field(default=None, gt=0)
    max_workdir_mb: int | None = Field(default=None, gt=0)
    memory_mb: int = Field(default=0, ge=0)
    max_walltime_s: float | None = Field(default=None, gt=0)
    check_s: float = Field(default=10.0, gt=0)


class JobSpec(_Record):
    """One payload to run, as a rank needs it."""

    job_id: int = Field(ge=1)
    task_id: int = Field(ge=1)
    attempt: int = Field(ge=1)
    dispatch: int = Field(ge=1)
    command: str = Field(min_length=1)
    cores: int = Field(ge=1)
    memory_mb: int = Field(ge=0)
    walltime_s: float = Field(gt=0)
    workdir: str
    env: dict[str, str] = Field(default_factory=dict)
    outputs: list[str] = Field(default_factory=list)
    limits: JobLimits = Field(default_factory=JobLimits)
    event_service: bool = False
    output_dir: str | None = None  # event service: where finished ranges' outputs are staged out


class RangeSpec(NamedTuple):
    """One event range of an event-service job (ids: task-job-file-range-attempt).

    Ranges and their events are named tuples, not models: a job of 10^5 one-event ranges moves
    each one tower -> relay -> rank and back, and a tuple is built, sent (a msgpack array, a pickle
    between ranks) and validated on receipt (every field, as a model's) at a fraction of a
    model's cost. A wire error names the field (see ``decode``)."""

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


class FileInfo(_Record):
    name: str
    size: int = Field(ge=0)


class JobEvent(_Record):
    """A change of a job's state on a node."""

    job_id: int = Field(ge=1)
    dispatch: int = Field(ge=1)
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
    error_diag: str | None = Field(default=None, max_length=4096)
    cpu_s: float | None = None
    wall_s: float | None = None
    max_rss_kb: int | None = None
    files: list[FileInfo] = Field(default_factory=list)
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


def trusted_maker(cls: type[BaseModel]):
    """A fast constructor of ``cls`` for records this process builds from values it has checked itself
    (a payload's exit, a range it handed out): no validation, like ``model_construct``, and no walk
    over every field with a default lookup, which ``model_construct`` does on each call and which
    shows in the per-job and per-range paths. Unknown field names are refused; omitted fields take
    their defaults. Whoever receives such a record over the wire validates it as any other."""
    # every field, in the model's order (a dict merge keeps it, so the wire form is the usual one)
    static = {n: None if f.is_required() or f.default_factory is not None else f.default
              for n, f in cls.model_fields.items()}
    factories = {n: f.default_factory for n, f in cls.model_fields.items() if f.default_factory is not None}
    required = frozenset(n for n, f in cls.model_fields.items() if f.is_required())
    names = frozenset(cls.model_fields)
    new, set_ = cls.__new__, object.__setattr__

    def make(**values):
        given = values.keys()
        if not (required <= given <= names):
            raise TypeError(f"{cls.__name__}: missing {sorted(required - given)}, unknown {sorted(given - names)}")
        d = {**static, **values}
        for name, factory in factories.items():
            if name not in values:
                d[name] = factory()
        obj = new(cls)
        set_(obj, "__dict__", d)
        set_(obj, "__pydantic_fields_set__", set(given))
        set_(obj, "__pydantic_extra__", None)
        set_(obj, "__pydantic_private__", None)
        return obj

    return make


Message = Annotated[
    Union[Hello, Welcome, Request, Work, NoWork, Update, Ack, Heartbeat, Bye, Reject],
    Field(discriminator="kind"),
]
_ADAPTER: TypeAdapter = TypeAdapter(Message)
make_job_event = trusted_maker(JobEvent)


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


_TUPLE_FIELDS = {"work": RangeSpec._fields, "update": RangeEvent._fields}


def _where(loc: tuple) -> str:
    """A validation error's location, dotted; a range's field by its name, not its place in the array."""
    parts = [str(x) for x in loc]
    fields = _TUPLE_FIELDS.get(loc[0]) if loc else None
    if fields and len(loc) >= 4 and loc[1] == "ranges" and type(loc[3]) is int and loc[3] < len(fields):
        parts[3] = fields[loc[3]]
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
