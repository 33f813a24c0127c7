"""Packing payloads of different widths and lengths into an MPI job's cores, checked end to end."""

from __future__ import annotations

import json

from tests.helpers import jobs_by, run_json


def test_a_narrow_job_fills_the_cores_a_wide_one_leaves_free(tmp_path):
    # Two 3-core jobs and one 1-core job on one 4-core rank. The wide jobs go first (widest first);
    # each waits for the narrow job's file, so they can only finish if the narrow job runs in the core
    # the first wide job leaves free. Asked for "4 cores", a tower that ignores the shape of the free
    # cores hands out both wide jobs and the first waits out its 60 s and fails.
    (tmp_path / "w.yaml").write_text(
        "name: packing\n"
        "tasks:\n"
        "  - name: wide\n"
        "    command: for i in $(seq 600); do [ -e {workload_dir}/narrow.done ] && exit 0; sleep 0.1; done; exit 1\n"
        "    count: 2\n"
        "    cores: 3\n"
        "    max_attempts: 1\n"
        "  - name: narrow\n"
        "    command: touch {workload_dir}/narrow.done\n"
        "    count: 1\n"
        "    max_attempts: 1\n")
    data = tmp_path / "run"
    code, summary = run_json("run", tmp_path / "w.yaml", "--ranks", 1, "--cores-per-rank", 4, "--data-dir", data)

    assert code == 0, summary
    jobs = jobs_by(data)
    assert summary["states"] == {"finished": 3}
    (narrow,) = [j for j in jobs.values() if j["task"] == "narrow"]
    first_wide = min((j for j in jobs.values() if j["task"] == "wide"), key=lambda j: j["start_time"])
    assert first_wide["start_time"] <= narrow["start_time"] <= first_wide["end_time"]


def test_jobs_with_walltime_estimates_start_longest_first(tmp_path):
    # one core: the jobs run one after another, in the order the tower hands them out
    estimates = {"a": "2s", "b": "10m", "c": "5", "d": "1h", "e": "90"}
    inputs = ", ".join(f"{{name: {k}, walltime: {v}}}" for k, v in estimates.items())
    (tmp_path / "w.yaml").write_text(
        "tasks:\n"
        "  - name: ordered\n"
        "    command: echo {inputs}\n"
        f"    inputs: [{inputs}]\n")
    data = tmp_path / "run"
    code, summary = run_json("run", tmp_path / "w.yaml", "--ranks", 1, "--cores-per-rank", 1, "--data-dir", data)

    assert code == 0, summary
    by_start = sorted(jobs_by(data).values(), key=lambda j: j["start_time"])
    assert [json.loads(j["inputs"]) for j in by_start] == [["d"], ["b"], ["e"], ["c"], ["a"]]
    assert [j["idx"] for j in by_start] == [3, 1, 4, 2, 0]
