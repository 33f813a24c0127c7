"""A big event-service job's merge runs in a process of its own (``python -m control_tower.merge``):
its answer, its errors, and a merge process that dies (a real SIGKILL) is started once more, then
fails the job with the reason. Real processes, real files, a real store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tarfile

import pytest

from control_tower import tower as tower_module
from control_tower.store import Store
from control_tower.tower import Tower, TowerConfig
from control_tower.workload import TaskSpec
from hpc_edge import protocol as p
from hpc_edge.errors import ErrorCode


def es_task() -> TaskSpec:
    # 6 events, 3 per job, 1 per range: jobs 1 and 2 of 3 ranges each
    return TaskSpec(name="sim", command="sim", event_service=True, events=6, events_per_job=3, events_per_range=1,
                    max_attempts=1, walltime=600)


@pytest.fixture
def tower(tmp_path):
    store = Store(tmp_path / "store.sqlite").open()
    t = Tower(store, TowerConfig(curve=False, merge_process_from=0), tmp_path)
    spec = es_task()
    task_id = store.add_task(spec, "wl")
    t.book.add_task(task_id, spec.name, spec)
    t.ranges.add_task(task_id, spec, fresh=True)
    yield t
    store.close()


def finish_all(tower: Tower, tmp_path) -> None:
    """Every range finished with an output of its own, committed: both jobs wait for their merge."""
    ranges, _ = tower.ranges.take("w1", 100)
    for r in ranges:
        out = tmp_path / f"{r.range_id}.out"
        out.write_text(f"events {r.first_event}-{r.last_event}\n")
        tower.ranges.apply("w1", p.RangeEvent(range_id=r.range_id, job_id=r.job_id, state="finished", t=1.0,
                                              output=str(out), size=out.stat().st_size))
    tower.flush()
    assert sorted(tower.ranges.to_merge) == [1, 2]


def merge_until_final(tower: Tower) -> None:
    async def go():
        for _ in range(10):
            tower.start_merges()
            if not tower.merges:
                return
            await asyncio.wait(list(tower.merges.values()))
            tower.collect_merges()
            tower.flush()

    asyncio.run(go())


def job_rows(tower: Tower) -> dict[int, tuple]:
    return {j: (s, code, diag, files) for j, s, code, diag, files in tower.store.db.execute(
        "SELECT job_id, state, error_code, error_diag, files FROM jobs ORDER BY job_id")}


def test_big_jobs_merge_in_a_process_and_finish_with_their_archive(tower, tmp_path):
    finish_all(tower, tmp_path)
    merge_until_final(tower)

    rows = job_rows(tower)
    assert [rows[j][0] for j in (1, 2)] == ["finished", "finished"]
    for job_id in (1, 2):
        (archive,) = json.loads(rows[job_id][3])
        with tarfile.open(archive["name"]) as tar:
            names = [m.name for m in tar.getmembers()]
            assert names == [f"1-{job_id}-0-{i}-1.out" for i in range(3)]
            first = 3 * (job_id - 1)
            assert tar.extractfile(names[0]).read() == f"events {first}-{first}\n".encode()


def test_a_merge_process_killed_once_is_started_again(tower, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    # the first merge process of each job is killed by SIGKILL before it answers; the next one merges
    script = (f"import os, pathlib, signal, sys\n"
              f"m = pathlib.Path({str(marker)!r} + sys.argv[2])\n"
              f"if not m.exists():\n    m.touch(); os.kill(os.getpid(), signal.SIGKILL)\n"
              f"from control_tower.merge import main\nsys.exit(main(sys.argv[1:]))\n")
    monkeypatch.setattr(tower_module, "MERGE_COMMAND", (sys.executable, "-c", script))
    finish_all(tower, tmp_path)
    merge_until_final(tower)

    rows = job_rows(tower)
    assert [rows[j][0] for j in (1, 2)] == ["finished", "finished"]
    assert (tmp_path / "killed-once1").exists() and (tmp_path / "killed-once2").exists()


def test_a_merge_process_that_keeps_dying_fails_its_job_with_the_reason(tower, tmp_path, monkeypatch):
    monkeypatch.setattr(tower_module, "MERGE_COMMAND", (sys.executable, "-c",
                                                        "import sys; print('out of memory', file=sys.stderr); "
                                                        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    finish_all(tower, tmp_path)
    merge_until_final(tower)

    rows = job_rows(tower)
    for job_id in (1, 2):
        state, code, diag, _ = rows[job_id]
        assert (state, code) == ("failed", int(ErrorCode.MERGE_FAILED))
        assert f"the merge process of job {job_id} ended with signal 9" in diag and "out of memory" in diag


def test_the_merge_command_answers_in_one_json_line(tower, tmp_path):
    finish_all(tower, tmp_path)

    def merge(*args):
        got = subprocess.run([sys.executable, "-m", "control_tower.merge", *map(str, args)], capture_output=True,
                             text=True, timeout=120)
        return got.returncode, got.stdout.strip().splitlines()

    code, lines = merge(tower.store.path, 1, "1-1-0-", tmp_path / "merged", "sim.1")
    assert code == 0 and len(lines) == 1
    assert json.loads(lines[0]) == {"path": str(tmp_path / "merged" / "sim.1.tgz")}
    assert merge(tower.store.path, 9, "1-9-0-", tmp_path / "merged", "sim.9") == (0, ['{"path": null}'])
    code, lines = merge(tmp_path / "no-such.sqlite", 1, "1-1-0-", tmp_path / "merged", "sim.1")
    assert code == 0 and "cannot read job 1's ranges from" in json.loads(lines[0])["error"]
    assert merge("only", "two")[0] == 2


def test_a_merge_process_dies_with_the_tower_that_started_it(tmp_path):
    """No orphan merge writes the file a restarted tower merges again: the parent is SIGKILLed, the
    kernel kills its merge process."""
    import os
    import select
    import signal

    child = ("from control_tower.merge import die_with_parent; import time; "
             "assert die_with_parent(); print('ready', flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        f"c = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, text=True); "
        "assert c.stdout.readline() == 'ready\\n'; print(c.pid, flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    merge = os.pidfd_open(int(parent.stdout.readline()))  # readable once that process has ended
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=30)

    try:
        gone = select.select([merge], [], [], 30)[0]
        if not gone:
            signal.pidfd_send_signal(merge, signal.SIGKILL)
        assert gone, "the merge process outlived its parent"
    finally:
        os.close(merge)
