"""Where a rank puts finished ranges' outputs: directories of its own in the job's output area, none
with more than OUTPUTS_PER_DIR entries; and a range whose output cannot be moved there fails with a
stage-out error naming the place, its output left where the payload wrote it. A real event-service
payload process (bench/payloads/es_noop.py) on a rank's executor; no MPI."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from hpc_edge.errors import ErrorCode
from hpc_edge.esrunner import OUTPUTS_PER_DIR
from hpc_edge.eventservice import extension
from hpc_edge.executor import Executor
from hpc_edge.protocol import JobSpec, RangeSpec

NOOP = Path(__file__).resolve().parents[2] / "bench" / "payloads" / "es_noop.py"


def es_spec(tmp_path: Path, job_id: int = 7) -> JobSpec:
    return JobSpec(job_id=job_id, task_id=3, attempt=1, dispatch=1, command=f"{sys.executable} {NOOP}", cores=1,
                   memory_mb=0, walltime_s=60, workdir=str(tmp_path / "jobs" / "noop" / str(job_id)),
                   event_service=True, output_dir=str(tmp_path / "outputs" / "noop" / str(job_id)))


def run_ranges(ex: Executor, spec: JobSpec, n: int, timeout: float = 120) -> dict[str, object]:
    """Give the executor n one-event ranges of the job; the final event of each, by range id."""
    ranges = [RangeSpec(f"3-{spec.job_id}-0-{i}-1", spec.job_id, i, i) for i in range(n)]
    ex.install_sigchld_wakeup()
    ex.es.add([spec], ranges)
    ex.es.mark_exhausted([spec.job_id])
    ended, deadline = {}, time.monotonic() + timeout
    while len(ended) < n or not ex.idle:
        assert time.monotonic() < deadline, f"{len(ended)} of {n} ranges ended"
        for e in ex.step():
            if e.state != "running":
                assert e.range_id not in ended, f"range {e.range_id} ended twice"
                ended[e.range_id] = e
        if len(ended) < n or not ex.idle:
            ex.wait(0.5)
    return ended


def test_outputs_go_into_directories_of_the_ranks_own_none_over_the_limit(ex, tmp_path):
    n = 2 * OUTPUTS_PER_DIR + 45
    spec = es_spec(tmp_path)
    ended = run_ranges(ex, spec, n)

    assert {e.state for e in ended.values()} == {"finished"}
    area = Path(spec.output_dir) / "ranges"
    # every output is where its event says, named by its range id, in a directory of this rank's
    for range_id, e in ended.items():
        out = Path(e.output)
        assert out.is_file() and out.name == f"{range_id}.out" and e.size == 0
        assert out.parent.parent == area and out.parent.name.startswith(f"{ex.host[:64]}-{os.getpid()}-")
    dirs = {d.name: sorted(os.listdir(d)) for d in area.iterdir()}
    assert sorted(len(v) for v in dirs.values()) == [45, OUTPUTS_PER_DIR, OUTPUTS_PER_DIR]
    assert sorted(f for v in dirs.values() for f in v) == sorted(f"{r}.out" for r in ended)
    # and nothing is left in the payload's directory but its logs
    workdirs = list(Path(spec.workdir).iterdir())
    assert len(workdirs) == 1 and sorted(os.listdir(workdirs[0])) == ["payload.stderr", "payload.stdout"]


def test_a_range_whose_output_cannot_be_moved_fails_naming_the_output_area_and_keeps_it(ex, tmp_path):
    spec = es_spec(tmp_path, job_id=8)
    Path(spec.output_dir).mkdir(parents=True)
    (Path(spec.output_dir) / "ranges").write_text("in the way")
    ended = run_ranges(ex, spec, 5)

    area = str(Path(spec.output_dir) / "ranges")
    for range_id, e in ended.items():
        assert (e.state, e.error_code) == ("failed", ErrorCode.STAGEOUT_FAILED)
        assert area in e.error_diag and "Not a directory" in e.error_diag
    # the outputs stay where the payload wrote them: nothing is deleted
    (workdir,) = Path(spec.workdir).iterdir()
    assert sorted(os.listdir(workdir)) == sorted([f"{r}.out" for r in ended] + ["payload.stderr", "payload.stdout"])


@given(st.text(alphabet="a./-_ ", max_size=12))
def test_an_outputs_extension_is_what_splitext_gives(name):
    # a moved output (and its name in a merge's archive) is <range id><extension of the payload's
    # file>: it must agree with os.path.splitext (leading dots, trailing dots, several dots, paths)
    assert extension(name) == os.path.splitext(name)[1]
