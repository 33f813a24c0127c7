"""The relay <-> tower wire protocol: every message survives a round trip, and anything else is a
ProtocolError that says what is wrong, whatever bytes arrive."""

from __future__ import annotations

import typing

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpc_edge import protocol as p
from hpc_edge.errors import ProtocolError

RANK = {"rank": 0, "host": "node001", "cores": 4, "memory_mb": 8000}
EVENT = {"job_id": 7, "dispatch": 1, "state": "running", "t": 1700000000.5}
# Derandomized: the same examples on every run, so a failure is a finding and never a flake.
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def spec(**kw) -> p.JobSpec:
    base = dict(job_id=7, task_id=2, attempt=1, dispatch=3, command="echo 'hi' > out.txt", cores=2,
                memory_mb=500, walltime_s=600.0, workdir="/scratch/jobs/sim/7/try3", env={"MODE": "fast"},
                outputs=("out.txt",))
    return p.JobSpec(**(base | kw))


MESSAGES = [
    p.Hello(worker_id="w-1", batch_id="123456", ends_at=1700003600.0, holding=[3, 4], last_seq=12,
            ranks=[p.RankInfo(rank=0, host="node001", cores=4, memory_mb=8000),
                   p.RankInfo(rank=1, host="node002", cores=4, memory_mb=8000, gpus=2)]),
    p.Hello(worker_id="w-2", ranks=[p.RankInfo(**RANK)]),
    p.Welcome(worker_id="w-1", heartbeat_s=10.0, last_seq=12, release=[4]),
    p.Request(req=5, cores=8, max_job_cores=4, max_job_memory_mb=8000, remaining_s=3540.5),
    p.Request(req=0, cores=1, max_job_cores=1, max_job_memory_mb=0),
    p.Work(req=5, jobs=[spec(), spec(job_id=8, env={}, outputs=())]),
    p.Work(req=6, jobs=[]),
    p.Work(req=7, ranges=[p.RangeSpec(range_id="3-9-0-4-1", job_id=9, first_event=400, last_event=499,
                                      lfn="evts.root", guid="G1", scope="mc")],
           es_jobs=[spec(job_id=9, event_service=True, output_dir="/scratch/out")], exhausted=[5]),
    p.NoWork(req=5, retry_s=0.2, drain=True),
    p.Update(seq=13, events=[
        p.JobEvent(**EVENT, rank=1, host="node002", pid=4242, start_time=1700000000.0),
        p.JobEvent(job_id=8, dispatch=2, state="failed", t=1700000100.0, exit_code=3, error_code=1001,
                   error_diag="exit code 3", cpu_s=1.5, wall_s=2.0, max_rss_kb=10240,
                   files=[p.FileInfo(name="out.txt", size=12)]),
        p.JobEvent(job_id=9, dispatch=1, state="preempted", t=1.0, signal=15, error_code=1020),
    ]),
    p.Update(seq=14, ranges=[p.RangeEvent(range_id="3-9-0-4-1", job_id=9, state="finished", t=2.0,
                                          output="out/3-9-0-4-1.root", size=2048)]),
    p.Ack(seq=13, commands=[p.Command(action="kill", job_ids=[7, 8], reason="user asked"),
                            p.Command(action="drain")]),
    p.Ack(),
    p.Heartbeat(running=3, last_seq=13),
    p.Bye(reason="walltime"),
    p.Reject(error="unknown worker w-9"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.kind)
def test_round_trip_gives_back_the_same_message(message):
    decoded = p.decode(p.encode(message))

    assert type(decoded) is type(message)
    assert decoded == message


def test_every_message_kind_of_the_protocol_has_a_round_trip_case():
    union, *_ = typing.get_args(p.Message)
    protocol_kinds = {cls.model_fields["kind"].default for cls in typing.get_args(union)}

    assert protocol_kinds == {m.kind for m in MESSAGES}
    assert {"hello", "welcome", "request", "work", "no_work", "update", "ack", "heartbeat", "bye",
            "reject"} <= protocol_kinds


def test_encoded_message_is_a_plain_versioned_msgpack_map():
    raw = msgpack.unpackb(p.encode(p.Bye(reason="done")), raw=False)

    assert raw == {"v": p.VERSION, "kind": "bye", "reason": "done"}


def test_message_of_exactly_the_size_limit_is_accepted():
    overhead = len(p.encode(p.Bye(reason="x" * 100_000))) - 100_000
    data = p.encode(p.Bye(reason="x" * (p.MAX_MESSAGE_BYTES - overhead)))

    assert len(data) == p.MAX_MESSAGE_BYTES
    assert p.decode(data).reason == "x" * (p.MAX_MESSAGE_BYTES - overhead)


def test_oversize_message_is_rejected_before_decoding():
    data = p.encode(p.Bye(reason="x" * p.MAX_MESSAGE_BYTES))

    with pytest.raises(ProtocolError, match=rf"message of {len(data)} bytes exceeds the "
                                            rf"{p.MAX_MESSAGE_BYTES}-byte limit"):
        p.decode(data)


def packed(raw) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize("data, expected", [
    (b"\xc1", "not a msgpack record"),
    (b"", "not a msgpack record"),
    (b"\x92\x01", "not a msgpack record"),
    (packed({"v": p.VERSION, "kind": "bye"}) + b"\x00", "not a msgpack record"),
    (b"GET / HTTP/1.1\r\n\r\n", "not a msgpack record"),
    (packed([1, "bye"]), "message must be a map, got list"),
    (packed("bye"), "message must be a map, got str"),
    (packed(None), "message must be a map, got NoneType"),
    (packed({"v": p.VERSION + 1, "kind": "bye"}), f"unsupported protocol version {p.VERSION + 1}"),
    (packed({"v": 1, "kind": "bye"}), f"unsupported protocol version 1 \\(this side speaks {p.VERSION}\\)"),
    (packed({"v": 0, "kind": "bye"}), "unsupported protocol version 0"),
    (packed({"v": "2", "kind": "bye"}), f"protocol version 'v' must be the integer {p.VERSION}, got str"),
    (packed({"v": True, "kind": "bye"}), f"protocol version 'v' must be the integer {p.VERSION}, got bool"),
    (packed({"kind": "bye"}), f"protocol version 'v' must be the integer {p.VERSION}, got NoneType"),
    (packed({"v": p.VERSION, "kind": "launch"}), "Input tag 'launch' found using 'kind' does not match"),
    (packed({"v": p.VERSION}), "Unable to extract tag using discriminator 'kind'"),
], ids=["reserved-byte", "empty", "truncated", "trailing-bytes", "http", "list", "string", "nil", "v-next", "v1", "v0",
        "v-string", "v-bool", "no-v", "unknown-kind", "no-kind"])
def test_decode_rejects_what_is_not_a_message(data, expected):
    with pytest.raises(ProtocolError, match=expected):
        p.decode(data)


def update(**kw):
    return {"v": p.VERSION, "kind": "update", "seq": 1, "events": [EVENT]} | kw


def hello(**kw):
    return {"v": p.VERSION, "kind": "hello", "worker_id": "w-1", "ranks": [RANK]} | kw


def request(**kw):
    return {"v": p.VERSION, "kind": "request", "req": 1, "cores": 4, "max_job_cores": 4, "max_job_memory_mb": 0} | kw


INVALID = [
    # missing required fields
    ({"v": p.VERSION, "kind": "hello", "ranks": [RANK]}, "invalid hello message: hello.worker_id: Field required"),
    ({"v": p.VERSION, "kind": "update", "events": [EVENT]}, "invalid update message: update.seq: Field required"),
    (hello(ranks=[{"rank": 0, "host": "n", "cores": 1}]), "hello.ranks.0.memory_mb: Field required"),
    ({"v": p.VERSION, "kind": "reject"}, "reject.error: Field required"),
    # wrong types
    (request(cores="many"), "invalid request message: request.cores: Input should be a valid integer"),
    (hello(ranks="node001"), "hello.ranks: Input should be a valid list"),
    (update(events={"0": EVENT}), "update.events: Input should be a valid list"),
    (hello(worker_id=42), "hello.worker_id: Input should be a valid string"),
    (update(events=[EVENT | {"t": "noon"}]), "update.events.0.t: Input should be a valid number"),
    (update(events=[EVENT | {"state": "exploded"}]), "update.events.0.state: Input should be 'running'"),
    ({"v": p.VERSION, "kind": "ack", "commands": [{"action": "reboot"}]}, "ack.commands.0.action"),
    # extra fields
    ({"v": p.VERSION, "kind": "bye", "colour": "red"}, "invalid bye message: bye.colour: Extra inputs are not permitted"),
    (update(events=[EVENT | {"secret": 1}]), "update.events.0.secret: Extra inputs are not permitted"),
    (hello(ranks=[RANK | {"numa": 2}]), "hello.ranks.0.numa: Extra inputs are not permitted"),
    # out of range
    (update(seq=-1), "update.seq: Input should be greater than or equal to 1"),
    (update(seq=0), "update.seq: Input should be greater than or equal to 1"),
    (hello(last_seq=-1), "hello.last_seq: Input should be greater than or equal to 0"),
    ({"v": p.VERSION, "kind": "heartbeat", "last_seq": -5}, "heartbeat.last_seq: Input should be greater than or equal to 0"),
    (update(events=[]), "invalid update message"),
    (update(events=[EVENT | {"job_id": 0}]), "update.events.0.job_id: Input should be greater than or equal to 1"),
    (hello(ranks=[]), "hello.ranks: List should have at least 1 item"),
    (hello(worker_id=""), "hello.worker_id: String should have at least 1 character"),
    (request(max_job_cores=0), "request.max_job_cores: Input should be greater than or equal to 1"),
    (request(req=-1), "request.req: Input should be greater than or equal to 0"),
    (update(events=[EVENT | {"error_diag": "x" * 5000}]), "update.events.0.error_diag: String should have at most"),
    # ranges and range events are arrays: an error names the field all the same
    (update(events=[], ranges=[["3-9-0-4-1", 9, "done", 2.0]]), "update.ranges.0.state: Input should be 'running'"),
    (update(events=[], ranges=[["", 9, "finished", 2.0]]), "update.ranges.0.range_id: String should have at least 1"),
    (update(events=[], ranges=[["3-9-0-4-1", 9, "finished"]]), "update.ranges.0.t: Field required"),
    (update(events=[], ranges=[["3-9-0-4-1", 9, "finished", 2.0, 0, "n", "o" * 5000]]),
     "update.ranges.0.output: String should have at most 4096"),
    (update(events=[], ranges=[["3-9-0-4-1", 9, "finished", 2.0] + [None] * 11]),
     "update.ranges.0: NamedTuple should have at most 14 items"),
    (update(events=[], ranges=["3-9-0-4-1"]), "update.ranges.0: Input should be a tuple, list"),
    ({"v": p.VERSION, "kind": "work", "req": 1, "ranges": [["3-9-0-4-1", 0, 4, 4]]},
     "work.ranges.0.job_id: Input should be greater than or equal to 1"),
    ({"v": p.VERSION, "kind": "work", "req": 1, "ranges": [["3-9-0-4-1", 9, -1, 4]]},
     "work.ranges.0.first_event: Input should be greater than or equal to 0"),
    # so are jobs and job events, their limits and files
    (update(events=[[7, 1, "exploded", 1.0]]), "update.events.0.state: Input should be 'running'"),
    (update(events=[[7, 0, "running", 1.0]]), "update.events.0.dispatch: Input should be greater than or equal to 1"),
    (update(events=[[7, 1, "running"]]), "update.events.0.t: Field required"),
    (update(events=[[7, 1, "failed", 1.0] + [None] * 8 + ["x" * 5000]]),
     "update.events.0.error_diag: String should have at most 4096"),
    (update(events=[[7, 1, "finished", 1.0] + [None] * 12 + [[["out.txt", -1]]]]),
     "update.events.0.files.0.size: Input should be greater than or equal to 0"),
    (update(events=[[7, 1, "finished", 1.0] + [None] * 15]), "update.events.0: NamedTuple should have at most 18 items"),
    ({"v": p.VERSION, "kind": "work", "req": 1, "jobs": [[7, 2, 1, 3, "", 2, 500, 600.0, "/w"]]},
     "work.jobs.0.command: String should have at least 1 character"),
    ({"v": p.VERSION, "kind": "work", "req": 1, "jobs": [[7, 2, 1, 3, "true", 0, 500, 600.0, "/w"]]},
     "work.jobs.0.cores: Input should be greater than or equal to 1"),
    ({"v": p.VERSION, "kind": "work", "req": 1, "jobs": [[7, 2, 1, 3, "true", 1, 500, 600.0, "/w", {"A": 1}]]},
     "work.jobs.0.env.A: Input should be a valid string"),
    ({"v": p.VERSION, "kind": "work", "req": 1,
      "jobs": [[7, 2, 1, 3, "true", 1, 500, 600.0, "/w", {}, [], [None, None, None, 0, None, -1.0]]]},
     "work.jobs.0.limits.check_s: Input should be greater than 0"),
    ({"v": p.VERSION, "kind": "work", "req": 1, "es_jobs": [[7, 2, 1, 3, "true", 1, -5, 600.0, "/w"]]},
     "work.es_jobs.0.memory_mb: Input should be greater than or equal to 0"),
]


@pytest.mark.parametrize("raw, expected", INVALID, ids=lambda v: v if isinstance(v, str) else "")
def test_decode_rejects_an_invalid_message_naming_the_field(raw, expected):
    with pytest.raises(ProtocolError) as err:
        p.decode(packed(raw))

    assert expected in str(err.value)


@pytest.mark.parametrize("raw", [{"v": p.VERSION, "kind": "ack", "seq": -1},
                                 {"v": p.VERSION, "kind": "welcome", "worker_id": "w-1", "heartbeat_s": 10.0,
                                  "last_seq": -1}], ids=["ack.seq", "welcome.last_seq"])
def test_decode_rejects_a_negative_sequence_number_in_every_message(raw):
    with pytest.raises(ProtocolError, match="seq"):
        p.decode(packed(raw))


def test_protocol_error_keeps_the_cause():
    with pytest.raises(ProtocolError) as err:
        p.decode(b"\xc1")

    assert err.value.__cause__ is not None


# ---- deeply nested values ---------------------------------------------------------------------

def nested_list(depth: int) -> bytes:
    """msgpack bytes of a list nested ``depth`` deep around the integer 1 (msgpack itself unpacks these)."""
    return b"\x91" * depth + b"\x01"


@pytest.mark.parametrize("depth", [10, 500])
def test_nested_junk_in_a_field_is_rejected(depth):
    data = b"\x83" + packed("v") + packed(p.VERSION) + packed("kind") + packed("bye") + packed("reason") + nested_list(depth)

    with pytest.raises(ProtocolError, match="bye.reason: Input should be a valid string"):
        p.decode(data)


def test_deeply_nested_version_is_a_protocol_error():
    data = b"\x82" + packed("v") + nested_list(1000) + packed("kind") + packed("bye")

    with pytest.raises(ProtocolError):
        p.decode(data)


# ---- fuzzing: decode returns a valid message or raises ProtocolError, nothing else -------------

def decode_or_reject(data: bytes) -> None:
    try:
        message = p.decode(data)
    except ProtocolError:
        return
    assert isinstance(message, p._Message)
    assert message.v == p.VERSION
    assert p.encode(p.decode(p.encode(message))) == p.encode(message)


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)
           | st.floats() | st.text(max_size=20) | st.binary(max_size=20))
structures = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12) | st.binary(max_size=4), children, max_size=5),
    max_leaves=30)
KINDS = ["hello", "welcome", "request", "work", "no_work", "update", "ack", "heartbeat", "bye", "reject"]
FIELDS = ["worker_id", "batch_id", "ranks", "ends_at", "holding", "last_seq", "heartbeat_s", "release", "req",
          "cores", "max_job_cores", "max_job_memory_mb", "remaining_s", "jobs", "retry_s", "drain", "seq",
          "events", "commands", "running", "reason", "error"]
SUBFIELDS = ["rank", "host", "cores", "memory_mb", "job_id", "dispatch", "state", "t", "action", "job_ids",
             "name", "size", "files", "command", "walltime_s", "workdir", "attempt", "task_id"]
records = st.dictionaries(st.sampled_from(SUBFIELDS), scalars | st.lists(scalars, max_size=3), max_size=8)
message_like = st.builds(
    lambda v, kind, fields: {"v": v, "kind": kind} | fields,
    st.sampled_from([1, 1, 1, 0, 2, True, 1.0, "1", None]),
    st.sampled_from(KINDS) | scalars,
    st.dictionaries(st.sampled_from(FIELDS), scalars | st.lists(records, max_size=3), max_size=6))


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data):
    decode_or_reject(data)


@FUZZ
@given(structures)
def test_fuzz_arbitrary_msgpack_structures(raw):
    decode_or_reject(packed(raw))


@FUZZ
@given(message_like)
def test_fuzz_message_shaped_maps(raw):
    decode_or_reject(packed(raw))


def mutate(raw, data):
    """Replace, delete or add one entry somewhere inside a decoded valid message."""
    node = raw
    while True:
        keys = sorted(node, key=str) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
            node = child
            continue
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace" or isinstance(node, list):
            node[key] = data.draw(structures)
        elif action == "delete":
            del node[key]
        else:
            node[data.draw(st.text(max_size=8))] = data.draw(structures)
        return


@FUZZ
@given(st.sampled_from(MESSAGES), st.data())
def test_fuzz_valid_messages_with_one_field_changed(message, data):
    raw = msgpack.unpackb(p.encode(message), raw=False)
    mutate(raw, data)
    decode_or_reject(packed(raw))


@FUZZ
@given(st.sampled_from(MESSAGES), st.data())
def test_fuzz_corrupted_valid_messages(message, data):
    encoded = bytearray(p.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(encoded) - 1))
        encoded[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    decode_or_reject(bytes(encoded[:cut]))


def test_jobs_and_job_events_travel_as_arrays_and_come_back_equal():
    """Protocol 3: a job and a job event (and a job's limits, an event's files) are msgpack arrays in
    their fields' order, not maps; a peer of protocol 2 is refused (see the version cases above)."""
    event = p.JobEvent(job_id=8, dispatch=2, state="finished", t=5.0, rank=1, host="n1", exit_code=0,
                       files=(p.FileInfo("out.txt", 12),), report={"exitCode": 0})
    raw = msgpack.unpackb(p.encode(p.Update(seq=1, events=[event])), raw=False)
    assert raw["events"] == [[8, 2, "finished", 5.0, 1, "n1", None, None, None, 0, None, None, None, None, None,
                              None, [["out.txt", 12]], {"exitCode": 0}]]
    job = spec(limits=p.JobLimits(max_walltime_s=60.0))
    raw = msgpack.unpackb(p.encode(p.Work(req=1, jobs=[job])), raw=False)
    assert raw["jobs"] == [[7, 2, 1, 3, "echo 'hi' > out.txt", 2, 500, 600.0, "/scratch/jobs/sim/7/try3",
                            {"MODE": "fast"}, ["out.txt"], [None, None, None, 0, 60.0, 10.0], False, None]]
    decoded = p.decode(p.encode(p.Work(req=1, jobs=[job]))).jobs[0]
    assert decoded == job and type(decoded.limits) is p.JobLimits
    # records built in a process (not validated there) have the defaults a decoded one has
    plain = p.JobEvent(job_id=1, dispatch=1, state="running", t=1.0)
    assert p.decode(p.encode(p.Update.model_construct(seq=1, events=[plain]))).events == [plain]
    assert plain.files == () and plain.report is None


def test_an_end_supersedes_its_running_event_and_nothing_else():
    """A rank's report and a relay's update carry a job's (or range's) end without its 'running'
    event when both are in the same batch; other jobs, other dispatches and lone starts stay."""
    def job(job_id, dispatch, state):
        return p.JobEvent(job_id=job_id, dispatch=dispatch, state=state, t=1.0, start_time=0.5, pid=99)

    def rng(range_id, state):
        return p.RangeEvent(range_id=range_id, job_id=3, state=state, t=1.0)

    events = [job(1, 1, "running"), job(2, 1, "running"), job(1, 2, "running"), rng("3-0", "running"),
              rng("3-1", "running"), job(1, 1, "finished"), rng("3-0", "failed"), job(4, 1, "failed")]
    kept = p.drop_superseded(events)
    assert [(type(e).__name__, getattr(e, "job_id", None), getattr(e, "dispatch", None),
             getattr(e, "range_id", None), e.state) for e in kept] == [
        ("JobEvent", 2, 1, None, "running"), ("JobEvent", 1, 2, None, "running"),
        ("RangeEvent", 3, None, "3-1", "running"), ("JobEvent", 1, 1, None, "finished"),
        ("RangeEvent", 3, None, "3-0", "failed"), ("JobEvent", 4, 1, None, "failed")]
    assert kept[3].start_time == 0.5 and kept[3].pid == 99  # the end keeps what 'running' said
    starts_only = events[:5]
    assert p.drop_superseded(starts_only) == starts_only
