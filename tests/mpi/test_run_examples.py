"""Real ``mpiexec -n 2`` and ``-n 4`` runs of ``hpc-edge run`` on the shipped examples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import EXAMPLES, jobs_by, query, run_json

pytestmark = pytest.mark.mpi


def try_dirs(data_dir: Path, task: str, job_id: int) -> list[Path]:
    return sorted((data_dir / "jobs" / task / str(job_id)).glob("try*"))


@pytest.mark.parametrize("ranks, messenger", [(2, "zmq"), (4, "zmq"), (2, "files")])
def test_hello_runs_every_payload_once(tmp_path, ranks, messenger):
    """Also over the shared-filesystem messenger, for nodes that cannot reach the login node."""
    data = tmp_path / "run"
    code, summary = run_json("run", EXAMPLES / "hello.yaml", "--ranks", ranks, "--data-dir", data,
                             "--messenger", messenger)
    assert code == 0, summary
    assert summary["states"] == {"finished": 300}
    jobs = jobs_by(data)
    assert len(jobs) == 300 and all(j["state"] == "finished" for j in jobs.values())
    for job_id, job in jobs.items():
        tries = try_dirs(data, "hello", job_id)
        assert len(tries) == 1, f"job {job_id} ran {len(tries)} times"
        assert (tries[0] / "hello.txt").read_text() == f"hello from job {job_id}, index {job['idx']}\n"
        assert job["exit_code"] == 0 and job["wall_s"] is not None and job["max_rss_kb"] > 0
    # every rank ran payloads, rank 0 (the relay) included
    assert set(Counter(j["rank"] for j in jobs.values())) == set(range(ranks))
    # one worker did it all (none died on the way), and said so before it ended (its last message
    # reached the tower: the ranks' quick exit does not drop it)
    assert [w for (w,) in query(data, "SELECT state FROM workers")] == ["done"]
    assert "worker local-00001 done (said bye: drained: no more work)" in (data / "tower.log").read_text()


@pytest.mark.parametrize("ranks, messenger", [(2, "zmq"), (4, "zmq"), (2, "files")])
def test_mixed_reaches_intended_states(tmp_path, ranks, messenger):
    data = tmp_path / "run"
    code, summary = run_json("run", EXAMPLES / "mixed.yaml", "--ranks", ranks, "--data-dir", data,
                             "--messenger", messenger)
    assert code == 1, "some jobs fail on purpose, so the run must exit non-zero"
    jobs = jobs_by(data)
    by_task = {}
    for job in jobs.values():
        by_task.setdefault(job["task"], []).append(job)
    for task in ("short", "pair", "wide", "pi"):
        assert {j["state"] for j in by_task[task]} == {"finished"}, task
    for job in by_task["flaky"]:
        if job["idx"] % 4 == 0:
            assert (job["state"], job["exit_code"], job["error_code"], job["attempt"]) == ("failed", 3, 1001, 2)
            assert len(try_dirs(data, "flaky", job["job_id"])) == 2
        else:
            assert job["state"] == "finished" and job["attempt"] == 1
    for job in by_task["no-output"]:
        assert (job["state"], job["exit_code"], job["error_code"]) == ("failed", 0, 1010)
    # the summary agrees with the store
    assert summary["states"] == dict(Counter(j["state"] for j in jobs.values()))
    assert summary["states"] == {"finished": 70, "failed": 4}
    # outputs exist, and the numpy payload's numbers are the ones its seed gives
    for job in by_task["wide"] + by_task["pair"]:
        (only,) = try_dirs(data, job["task"], job["job_id"])
        assert (only / f"{job['task']}.txt").read_text() == f"{job['task']} {job['idx']}\n"
    for job in by_task["pi"]:
        (only,) = try_dirs(data, "pi", job["job_id"])
        with h5py.File(only / "result.h5") as f:
            xy = np.random.default_rng(job["idx"]).random((100000, 2))
            assert int(f["inside"][0]) == int(np.count_nonzero((xy ** 2).sum(axis=1) <= 1.0))
    # no payload ran twice: one try per job that finished on its first attempt
    for job in jobs.values():
        if job["state"] == "finished":
            assert len(try_dirs(data, job["task"], job["job_id"])) == 1 and job["attempt"] == 1
