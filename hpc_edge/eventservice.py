"""Event-service payloads: the AthenaMP-style protocol on a payload's stdin/stdout, and a helper to
write such a payload as a plain function of a range.

The payload prints ``Ready for events``; it then reads one line: a JSON list of ranges
(``eventRangeID``, ``startEvent``, ``lastEvent``, ``LFN``, ``GUID``, ``scope``) or ``No more events``.
For each finished range it prints ``<output path>,ID:<range id>,CPU:<s>,WALL:<s>``; for a range it
could not process, ``ERR,ID:<range id>,CODE:<n>,MSG:<text>``. Any other line is ordinary output.

    from hpc_edge.eventservice import serve

    def simulate(r):             # r.range_id, r.first_event, r.last_event, r.lfn
        path = f"{r.range_id}.h5"
        ...                      # write the range's events there
        return path

    serve(simulate)
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Callable, NamedTuple, TextIO

READY = "Ready for events"
NO_MORE = "No more events"
_DONE = re.compile(r"^(?P<path>.+),ID:(?P<id>[^,]+),CPU:(?P<cpu>[0-9.eE+-]+),WALL:(?P<wall>[0-9.eE+-]+)\s*$")
_ERR = re.compile(r"^ERR,ID:(?P<id>[^,]+),CODE:(?P<code>-?\d+),MSG:(?P<msg>.*)$")
FLUSH_S = 0.005  # serve(): range reports wait at most this long in the payload's buffer
PAYLOAD_ERROR = 2001  # default code of a range the payload reports as failed (experiment range)


def extension(path: str) -> str:
    """``os.path.splitext(path)[1]`` for a POSIX path, without its general machinery: a rank and a
    merge take the extension of every range's output."""
    base = path[path.rfind("/") + 1:]
    i = base.rfind(".")
    return base[i:] if i > 0 and base[:i].strip(".") else ""


def panda_range(range_id: str, first_event: int, last_event: int, lfn: str = "", guid: str = "",
                scope: str = "") -> dict:
    """A range as the payload reads it, with PanDA's keys."""
    return {"eventRangeID": range_id, "startEvent": first_event, "lastEvent": last_event, "LFN": lfn,
            "GUID": guid, "scope": scope}


class EventRange(NamedTuple):
    """One range as a payload gets it (a named tuple: immutable, and cheap to make per range)."""

    range_id: str
    first_event: int
    last_event: int
    lfn: str = ""
    guid: str = ""
    scope: str = ""

    @property
    def events(self) -> range:
        return range(self.first_event, self.last_event + 1)

    def to_panda(self) -> dict:
        return panda_range(self.range_id, self.first_event, self.last_event, self.lfn, self.guid, self.scope)

    @classmethod
    def from_panda(cls, d: dict) -> "EventRange":
        return cls(str(d["eventRangeID"]), int(d["startEvent"]), int(d["lastEvent"]), str(d.get("LFN") or ""),
                   str(d.get("GUID") or ""), str(d.get("scope") or ""))


class Report(NamedTuple):
    """A line the payload wrote about a range: done (with output) or failed (with code and message)."""

    range_id: str
    ok: bool
    output: str | None = None
    cpu_s: float | None = None
    wall_s: float | None = None
    code: int | None = None
    message: str = ""


def parse_report(line: str) -> Report | None:
    """A payload's stdout line as a range report, or None if it is ordinary output."""
    line = line.rstrip("\n")
    if line.startswith("ERR,"):
        m = _ERR.match(line)
        if m:
            return Report(m["id"], False, code=int(m["code"]), message=m["msg"])
    m = _DONE.match(line)
    if m:
        return Report(m["id"], True, output=m["path"], cpu_s=float(m["cpu"]), wall_s=float(m["wall"]))
    return None


def format_done(output: str, range_id: str, cpu_s: float, wall_s: float) -> str:
    return f"{output},ID:{range_id},CPU:{cpu_s:.6f},WALL:{wall_s:.6f}"


def format_error(range_id: str, code: int, message: str) -> str:
    return f"ERR,ID:{range_id},CODE:{code},MSG:{' '.join(message.split())[:500]}"


def serve(process: Callable[[EventRange], str], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the payload side of the protocol until ``No more events``; return the number of ranges done.

    ``process(range)`` returns the path of the range's output file; an exception reports the range
    as failed (``ERR``) and the payload goes on with the next one. Reports of short ranges are
    written together, at most ``FLUSH_S`` apart, and always before asking for more (one write and one
    wake-up of the rank per batch rather than per range); a payload dying loses at most that much.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    done = 0
    flushed = time.perf_counter()
    while True:
        print(READY, file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == NO_MORE:
            return done
        try:
            ranges = [EventRange.from_panda(d) for d in json.loads(line)]
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            print(f"hpc-edge payload: cannot read ranges from {line.strip()[:200]!r}: {exc}", file=sys.stderr)
            return done
        # one clock reading of each kind per range: a range's end is the next one's start (the
        # process-time clock is a system call); writing a report counts to the range after it
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for r in ranges:
            try:
                output = process(r)
            except Exception as exc:  # noqa: BLE001 - the payload reports the range as failed, goes on
                report = format_error(r.range_id, PAYLOAD_ERROR, f"{type(exc).__name__}: {exc}")
                wall1, cpu1 = time.perf_counter(), time.process_time()
            else:
                wall1, cpu1 = time.perf_counter(), time.process_time()
                report = format_done(str(output), r.range_id, cpu1 - cpu0, wall1 - wall0)
                done += 1
            wall0, cpu0 = wall1, cpu1
            stdout.write(report + "\n")
            if wall1 - flushed >= FLUSH_S:
                stdout.flush()
                flushed = wall1
        stdout.flush()
        flushed = time.perf_counter()
