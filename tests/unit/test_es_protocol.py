"""The payload side of the event-service protocol: the report lines a payload writes about its ranges,
and ``serve()`` driving a payload function over in-memory stdin/stdout the way a rank would."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpc_edge.eventservice import (NO_MORE, PAYLOAD_ERROR, READY, EventRange, Report, format_done, format_error,
                                   parse_report, serve)

RANGE_A = {"eventRangeID": "3-7-0-0-1", "startEvent": 0, "lastEvent": 9, "LFN": "evgen.pool.root",
           "GUID": "6B4C-11EE", "scope": "mc23"}
RANGE_B = {"eventRangeID": "3-7-0-1-1", "startEvent": 10, "lastEvent": 19, "LFN": "evgen.pool.root",
           "GUID": "6B4C-11EE", "scope": "mc23"}


# ---- report lines -----------------------------------------------------------------------------

@pytest.mark.parametrize("line, output", [
    ("range_0.h5,ID:3-7-0-0-1,CPU:1.5,WALL:2.25", "range_0.h5"),
    ("out/sub dir/range_0.h5,ID:3-7-0-0-1,CPU:1.5,WALL:2.25\n", "out/sub dir/range_0.h5"),
    ("/scratch/job 7/range_0.h5,ID:3-7-0-0-1,CPU:1.5,WALL:2.25", "/scratch/job 7/range_0.h5"),
    ("/data/a,b/run,1,range_0.h5,ID:3-7-0-0-1,CPU:1.5,WALL:2.25", "/data/a,b/run,1,range_0.h5"),
    ("ERR.h5,ID:3-7-0-0-1,CPU:1.5,WALL:2.25", "ERR.h5"),
])
def test_a_done_line_gives_the_output_path_range_and_times(line, output):
    assert parse_report(line) == Report("3-7-0-0-1", True, output=output, cpu_s=1.5, wall_s=2.25)


def test_a_done_line_accepts_exponent_times_and_trailing_blanks():
    r = parse_report("r.h5,ID:9-1-0-2-3,CPU:1e-3,WALL:2.5E+2  \r\n")
    assert (r.range_id, r.output, r.cpu_s, r.wall_s) == ("9-1-0-2-3", "r.h5", 0.001, 250.0)


@pytest.mark.parametrize("line, code, message", [
    ("ERR,ID:3-7-0-0-1,CODE:2001,MSG:ValueError: bad input, event 5", 2001, "ValueError: bad input, event 5"),
    ("ERR,ID:3-7-0-0-1,CODE:-9,MSG:", -9, ""),
    ("ERR,ID:3-7-0-0-1,CODE:1010,MSG:output missing\n", 1010, "output missing"),
])
def test_an_err_line_gives_the_range_code_and_message(line, code, message):
    assert parse_report(line) == Report("3-7-0-0-1", False, code=code, message=message)


@pytest.mark.parametrize("line", [
    READY,
    NO_MORE,
    "",
    "processing event 5 of range 3-7-0-0-1",
    "ERR something went wrong",
    "ERR,ID:3-7-0-0-1,CODE:abc,MSG:x",          # code is not a number
    "ERR,ID:3-7-0-0-1,MSG:x",                   # no code
    "range_0.h5,ID:3-7-0-0-1,CPU:1.5",          # no wall time
    "range_0.h5,ID:3-7-0-0-1,CPU:fast,WALL:1",  # cpu is not a number
    ",ID:3-7-0-0-1,CPU:1,WALL:1",               # no path
    "ID:3-7-0-0-1,CPU:1,WALL:1",
    "range_0.h5,ID:3-7-0-0-1,CPU:1,WALL:1 and more",
])
def test_ordinary_output_is_not_a_report(line):
    assert parse_report(line) is None


_PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789/._-, :"
_ID_CHARS = "0123456789-abcxyz_."


@given(path=st.text(_PATH_CHARS, min_size=1, max_size=60).filter(lambda s: s.strip() == s and s.strip()),
       range_id=st.text(_ID_CHARS, min_size=1, max_size=30),
       cpu=st.floats(min_value=0, max_value=1e6), wall=st.floats(min_value=0, max_value=1e6))
def test_format_done_round_trips_through_parse_report(path, range_id, cpu, wall):
    r = parse_report(format_done(path, range_id, cpu, wall))
    assert r == Report(range_id, True, output=path, cpu_s=float(f"{cpu:.6f}"), wall_s=float(f"{wall:.6f}"))


@given(range_id=st.text(_ID_CHARS, min_size=1, max_size=30), code=st.integers(-10**6, 10**6),
       message=st.text(max_size=800))
def test_format_error_round_trips_through_parse_report(range_id, code, message):
    line = format_error(range_id, code, message)
    assert "\n" not in line
    assert parse_report(line) == Report(range_id, False, code=code, message=" ".join(message.split())[:500])


def test_format_error_puts_a_multiline_message_on_one_line():
    line = format_error("3-7-0-0-1", 2001, "Traceback (most recent call last):\n  File 'x'\nKeyError: 'y'")
    assert parse_report(line).message == "Traceback (most recent call last): File 'x' KeyError: 'y'"


# ---- serve() ----------------------------------------------------------------------------------

def run_serve(process, *lines: str) -> tuple[int, list[str]]:
    stdin = io.StringIO("".join(line + "\n" for line in lines))
    stdout = io.StringIO()
    n = serve(process, stdin=stdin, stdout=stdout)
    return n, stdout.getvalue().splitlines()


def test_serve_processes_a_list_of_ranges_and_reports_each():
    seen: list[EventRange] = []

    def process(r: EventRange) -> str:
        seen.append(r)
        return f"out/{r.range_id}.h5"

    n, out = run_serve(process, json.dumps([RANGE_A, RANGE_B]), NO_MORE)

    assert n == 2
    assert seen == [EventRange("3-7-0-0-1", 0, 9, "evgen.pool.root", "6B4C-11EE", "mc23"),
                    EventRange("3-7-0-1-1", 10, 19, "evgen.pool.root", "6B4C-11EE", "mc23")]
    assert list(seen[1].events) == list(range(10, 20))
    assert out[0] == READY and out[3] == READY and len(out) == 4
    reports = [parse_report(line) for line in out[1:3]]
    assert [(r.range_id, r.ok, r.output) for r in reports] == [("3-7-0-0-1", True, "out/3-7-0-0-1.h5"),
                                                               ("3-7-0-1-1", True, "out/3-7-0-1-1.h5")]
    assert all(r.cpu_s >= 0 and r.wall_s >= 0 for r in reports)


def test_serve_asks_again_after_each_list_until_no_more_events():
    n, out = run_serve(lambda r: "x.h5", json.dumps([RANGE_A]), json.dumps([RANGE_B]), NO_MORE)

    assert n == 2
    assert [line == READY for line in out] == [True, False, True, False, True]
    assert [parse_report(line).range_id for line in out if line != READY] == ["3-7-0-0-1", "3-7-0-1-1"]


def test_a_range_whose_function_raises_is_reported_failed_and_the_payload_goes_on():
    def process(r: EventRange) -> str:
        if r.first_event == 0:
            raise ValueError(f"corrupt event {r.first_event + 3}\nin input")
        return "b.h5"

    n, out = run_serve(process, json.dumps([RANGE_A, RANGE_B]), NO_MORE)

    assert n == 1
    assert parse_report(out[1]) == Report("3-7-0-0-1", False, code=PAYLOAD_ERROR,
                                          message="ValueError: corrupt event 3 in input")
    assert parse_report(out[2]).ok and parse_report(out[2]).range_id == "3-7-0-1-1"
    assert out[3] == READY


def test_optional_panda_fields_may_be_absent_or_null():
    seen = []
    n, _ = run_serve(lambda r: seen.append(r) or "x.h5",
                     json.dumps([{"eventRangeID": 5, "startEvent": "3", "lastEvent": 4, "LFN": None}]), NO_MORE)
    assert n == 1
    assert seen == [EventRange("5", 3, 4, "", "", "")]


def test_end_of_input_ends_serve_like_no_more_events():
    n, out = run_serve(lambda r: "x.h5", json.dumps([RANGE_A]))
    assert n == 1
    assert out[-1] == READY


def test_no_more_events_at_once_processes_nothing():
    calls = []
    n, out = run_serve(calls.append, NO_MORE)
    assert (n, out, calls) == (0, [READY], [])


@pytest.mark.parametrize("garbage", [
    "this is not json",
    "{\"eventRangeID\": \"3-7-0-0-1\"}",
    "[{\"startEvent\": 0, \"lastEvent\": 9}]",
    "[{\"eventRangeID\": \"a\", \"startEvent\": \"zero\", \"lastEvent\": 9}]",
    "[{\"eventRangeID\": \"a\", \"startEvent\": null, \"lastEvent\": 9}]",
    "[1, 2]",
    "42",
    "null",
    "",
])
def test_garbage_on_stdin_ends_serve_with_a_message_and_no_traceback(garbage, capsys):
    calls = []
    n, out = run_serve(calls.append, garbage, json.dumps([RANGE_A]))

    assert n == 0 and calls == []
    assert out == [READY]
    err = capsys.readouterr().err
    assert "cannot read ranges" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("garbage", [
    "[{\"eventRangeID\": \"a\", \"startEvent\": Infinity, \"lastEvent\": 9}]",
    "[{\"eventRangeID\": \"a\", \"startEvent\": 0, \"lastEvent\": 1e400}]",
])
def test_an_infinite_event_number_ends_serve_with_a_message(garbage, capsys):
    n, out = run_serve(lambda r: "x.h5", garbage)

    assert (n, out) == (0, [READY])
    assert "cannot read ranges" in capsys.readouterr().err
