"""A rank stopping (drained, terminated, walltime) with event-service payloads: one with no range in
flight is told "No more events" and ends by itself, as at its job's end; one that does not end gets
SIGTERM after the grace. Real payload processes on a rank's executor; no MPI."""

from __future__ import annotations

import sys
import time
from pathlib import Path


from hpc_edge import esrunner
from hpc_edge.errors import ErrorCode
from hpc_edge.executor import Executor
from hpc_edge.protocol import JobSpec, RangeSpec

N = 3
# reports the job's N ranges (in the lists it is given), then asks for more; what it does next is the tail
PAYLOAD = f"""
import json, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, lambda *_: (Path("sigterm").write_text("x"), sys.exit(0)))
done = 0
while done < {N}:
    print("Ready for events", flush=True)
    for r in json.loads(sys.stdin.readline()):
        open(r["eventRangeID"] + ".out", "w").close()
        print(f"{{r['eventRangeID']}}.out,ID:{{r['eventRangeID']}},CPU:0,WALL:0", flush=True)
        done += 1
print("Ready for events", flush=True)
"""
ENDS_WHEN_TOLD = PAYLOAD + """
if sys.stdin.readline().strip() == "No more events":
    Path("finalized").write_text("x")
"""
NEVER_READS = PAYLOAD + """
time.sleep(600)
"""


def start(ex: Executor, tmp_path: Path, tail: str, n: int = N) -> Path:
    """Run a job of n ranges with the payload until each range is reported; the payload's directory."""
    script = tmp_path / "payload.py"
    script.write_text(tail)
    spec = JobSpec(job_id=5, task_id=2, attempt=1, dispatch=1, command=f"{sys.executable} {script}", cores=1,
                   memory_mb=0, walltime_s=60, workdir=str(tmp_path / "jobs" / "5"), event_service=True,
                   output_dir=str(tmp_path / "outputs" / "5"))
    ex.install_sigchld_wakeup()
    ex.es.add([spec], [RangeSpec(f"2-5-0-{i}-1", 5, i, i) for i in range(n)])
    done, deadline = set(), time.monotonic() + 60
    while len(done) < n:
        assert time.monotonic() < deadline, f"{len(done)} of {n} ranges reported"
        done |= {e.range_id for e in ex.step() if e.state == "finished"}
        if len(done) < n:
            ex.wait(0.5)
    (workdir,) = Path(spec.workdir).iterdir()
    return workdir


def stop_and_wait(ex: Executor, timeout: float = 60) -> list:
    events = ex.kill_all(ErrorCode.WORKER_STOPPED, "drained: no more work")
    deadline = time.monotonic() + timeout
    while ex.es.procs:
        assert time.monotonic() < deadline, "the payload did not end"
        events += ex.step()
        if ex.es.procs:
            ex.wait(0.2)
    return events


def test_a_payload_with_no_range_in_flight_is_told_no_more_events_and_ends_by_itself(ex, tmp_path):
    workdir = start(ex, tmp_path, ENDS_WHEN_TOLD)
    (proc,) = ex.es.procs.values()

    assert stop_and_wait(ex) == []  # nothing was in flight: no range changes state
    assert (workdir / "finalized").exists() and not (workdir / "sigterm").exists()
    assert proc.proc.returncode == 0


def test_a_payload_that_does_not_end_when_told_gets_sigterm_after_the_grace(ex, tmp_path, monkeypatch):
    monkeypatch.setattr(esrunner, "CLOSE_GRACE_S", 0.5)
    workdir = start(ex, tmp_path, NEVER_READS)
    t0 = time.monotonic()

    assert stop_and_wait(ex) == []
    assert time.monotonic() - t0 >= 0.5  # it had the grace ...
    assert (workdir / "sigterm").exists()  # ... then SIGTERM, which it handled (not SIGKILL)
