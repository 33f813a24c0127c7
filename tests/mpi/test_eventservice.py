"""Event service for real: ``mpiexec -n 4`` ranks, AthenaMP-style payloads, merged HDF5, no event lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import EXAMPLES, HPC_EDGE, jobs_by, processes_under, query, run_json, scalar, wait_for, write_workload

sys.path.insert(0, str(EXAMPLES / "payloads"))
from toy_detector import simulate_event  # noqa: E402

pytestmark = pytest.mark.mpi


def merged(data: Path, task: str, job_id: int) -> h5py.File:
    return h5py.File(data / "outputs" / task / str(job_id) / f"{task}.{job_id}.h5")


def check_events_against_seeds(f: h5py.File, sample: int = 25) -> None:
    numbers = f["event_number"][:]
    for i in np.linspace(0, len(numbers) - 1, sample).astype(int):
        expected = simulate_event(int(numbers[i]))
        assert f["n_particles"][i] == expected["n_particles"]
        assert f["energy_sum"][i] == expected["energy_sum"]
        assert np.array_equal(f["calo"][i], expected["calo"])


def test_example_on_four_ranks_merges_every_event_once_in_order(tmp_path):
    data = tmp_path / "run"
    code, summary = run_json("run", EXAMPLES / "eventservice.yaml", "--ranks", "4", "--data-dir", data)
    assert code == 0, summary
    assert summary["states"] == {"finished": 2}
    for job_id, first in ((1, 0), (2, 1000)):
        with merged(data, "toysim", job_id) as f:
            assert np.array_equal(f["event_number"][:], np.arange(first, first + 1000))
            assert f.attrs["n_events"] == 1000 and f.attrs["n_ranges"] == 100
            assert list(f.attrs["range_first_event"]) == list(range(first, first + 1000, 10))
            check_events_against_seeds(f)
    ranges = query(data, "SELECT state, count(*), count(DISTINCT rank) FROM ranges GROUP BY state")
    assert ranges == [("finished", 200, 4)], "every range finished, spread over all 4 ranks"


def test_killed_mpi_job_loses_no_event(tmp_path):
    workload = write_workload(tmp_path, f"""
name: es-kill
tasks:
  - name: sim
    event_service: true
    command: python {EXAMPLES}/payloads/toy_detector.py
    events: 3000
    events_per_range: 10
""")
    data = tmp_path / "run"

    proc = subprocess.Popen([*HPC_EDGE, "run", workload, "--ranks", "2", "--data-dir", data, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: scalar(data, "SELECT count(*) FROM ranges WHERE state='finished'") >= 60, 120,
                 "a fifth of the ranges done")
        (batch_id,) = query(data, "SELECT batch_id FROM workers WHERE worker_id='local-00001'")[0]
        os.killpg(int(batch_id.split(":")[0]), signal.SIGKILL)  # the whole MPI job, at once
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    workers = query(data, "SELECT worker_id, state FROM workers ORDER BY worker_id")
    assert workers[0] == ("local-00001", "failed") and len(workers) >= 2
    states = query(data, "SELECT state, count(*), max(attempt) FROM ranges GROUP BY state")
    assert states == [("finished", 300, 1)], "ranges of the killed job came back without using an attempt"
    on_second = query(data, "SELECT count(*) FROM ranges WHERE worker_id != 'local-00001'")[0][0]
    assert on_second > 0
    with merged(data, "sim", 1) as f:
        assert np.array_equal(f["event_number"][:], np.arange(3000))
        check_events_against_seeds(f)
    assert processes_under(data) == []


def test_payload_crashing_on_a_chosen_range(tmp_path):
    payload = tmp_path / "crashy.py"
    payload.write_text(f"""
import os, sys
sys.path.insert(0, {str(EXAMPLES / 'payloads')!r})
from toy_detector import simulate_range
from hpc_edge.eventservice import serve

def process(r):
    if r.first_event <= 55 <= r.last_event:
        os._exit(7)          # dies in the middle of this range, every time
    return simulate_range(r)

serve(process)
""")
    workload = write_workload(tmp_path, f"""
name: crashy
tasks:
  - name: crashy
    event_service: true
    command: python {payload}
    events: 200
    events_per_range: 10
    max_attempts: 3
""")
    data = tmp_path / "run"
    code, summary = run_json("run", workload, "--ranks", "2", "--data-dir", data)
    assert code == 1 and summary["states"] == {"failed": 1}
    job = jobs_by(data)[1]
    assert job["error_code"] == 1060 and job["error_diag"] == "1 of 20 ranges failed for good"
    bad = query(data, "SELECT first_event, state, attempt, exit_code, error_code FROM ranges WHERE state != 'finished'")
    assert bad == [(50, "failed", 3, 7, 1001)]
    assert query(data, "SELECT count(*) FROM ranges WHERE state='finished'")[0][0] == 19
    with merged(data, "crashy", 1) as f:
        expected = [n for n in range(200) if not 50 <= n <= 59]
        assert list(f["event_number"][:]) == expected
        assert f.attrs["n_events"] == 190


def test_many_short_ranges_go_in_lists_and_each_finishes_once(tmp_path):
    """20,000 one-event ranges of a payload that does almost nothing: the ranks hand out lists of
    ranges (the payload logs each list it gets), large messages cross MPI both ways at once, and
    every range ends in the archive exactly once (each job of 10,000 ranges is merged in a process
    of its own: ``tower.merge_process_from`` is 5,000)."""
    import tarfile

    payload = tmp_path / "quick.py"
    payload.write_text(f"""
import json, sys
log = open({str(tmp_path / 'lists.log')!r} + "." + str(__import__("os").getpid()), "w")
while True:
    print("Ready for events", flush=True)
    line = sys.stdin.readline()
    if not line or line.strip() == "No more events":
        break
    ranges = json.loads(line)
    log.write(f"{{len(ranges)}}\\n")
    for r in ranges:
        name = r["eventRangeID"] + ".out"
        open(name, "w").close()
        print(f"{{name}},ID:{{r['eventRangeID']}},CPU:0,WALL:0.00001", flush=True)
""")
    workload = write_workload(tmp_path, f"""
name: quick
tasks:
  - name: quick
    event_service: true
    command: python {payload}
    events: 20000
    events_per_range: 1
    events_per_job: 10000
    max_attempts: 1
""")
    data = tmp_path / "run"
    code, summary = run_json("run", workload, "--ranks", "2", "--data-dir", data)
    assert code == 0, summary
    assert query(data, "SELECT state, count(*), count(DISTINCT first_event), max(attempt) FROM ranges GROUP BY state") == \
        [("finished", 20000, 20000, 1)]
    sizes = [int(n) for log in tmp_path.glob("lists.log.*") for n in log.read_text().split()]
    assert sum(sizes) == 20000 and max(sizes) > 1, "short ranges should be handed out several at a time"
    names = set()
    for job_id in (1, 2):
        with tarfile.open(data / "outputs" / "quick" / str(job_id) / f"quick.{job_id}.tgz") as tar:
            names.update(tar.getnames())
    assert len(names) == 20000


def test_each_range_reaches_the_payload_with_its_file_guid_and_scope(tmp_path):
    """The PanDA fields of a range (LFN, GUID, scope of its input file) travel tower -> relay -> rank
    -> payload intact: the payload writes what it was given into the range's output."""
    import json
    import tarfile

    payload = tmp_path / "echo.py"
    payload.write_text("""
from hpc_edge.eventservice import serve

def echo(r):
    with open(f"{r.range_id}.txt", "w") as f:
        f.write(f"{r.lfn}|{r.guid}|{r.scope}|{r.first_event}|{r.last_event}")
    return f"{r.range_id}.txt"

serve(echo)
""")
    files = [{"name": "evgen.1.pool.root", "events": 7, "guid": "6B4C-11EE-A1", "scope": "mc23_13p6TeV"},
             {"name": "evgen 2.root", "events": 5, "guid": "", "scope": ""}]
    workload = write_workload(tmp_path, f"""
name: fields
tasks:
  - name: fields
    event_service: true
    command: python {payload}
    events_per_range: 3
    files: {json.dumps(files)}
    max_attempts: 1
""")
    data = tmp_path / "run"
    code, summary = run_json("run", workload, "--ranks", "2", "--data-dir", data)
    assert code == 0, summary
    seen = {}
    for job_id in (1, 2):
        with tarfile.open(data / "outputs" / "fields" / str(job_id) / f"fields.{job_id}.tgz") as tar:
            for member in tar.getmembers():
                seen[member.name] = tar.extractfile(member).read().decode()
    assert seen == {
        "1-1-0-0-1.txt": "evgen.1.pool.root|6B4C-11EE-A1|mc23_13p6TeV|0|2",
        "1-1-0-1-1.txt": "evgen.1.pool.root|6B4C-11EE-A1|mc23_13p6TeV|3|5",
        "1-1-0-2-1.txt": "evgen.1.pool.root|6B4C-11EE-A1|mc23_13p6TeV|6|6",
        "1-2-1-0-1.txt": "evgen 2.root|||0|2",
        "1-2-1-1-1.txt": "evgen 2.root|||3|4",
    }
