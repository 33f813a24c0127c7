"""Payloads on node-local scratch (``--scratch``): what comes back to the shared job directory."""

from __future__ import annotations

from tests.helpers import jobs_by, run_cli, run_json, write_workload


def test_scratch_brings_back_outputs_and_logs_and_everything_of_a_failure(tmp_path):
    (tmp_path / "w.yaml").write_text(
        "name: scratch\n"
        "tasks:\n"
        "  - name: ok\n"
        "    command: 'echo \"out {index}\" > result.txt; echo said {index}; true > quiet.log; pwd > where.txt'\n"
        "    count: 3\n"
        "    outputs: [result.txt, where.txt]\n"
        "  - name: quiet\n"
        "    command: /bin/true\n"
        "    count: 4\n"
        "  - name: bad\n"
        "    command: echo debug > debug.txt; echo oops >&2; exit 3\n"
        "    count: 1\n"
        "    max_attempts: 1\n")
    scratch = tmp_path / "node-local"
    data = tmp_path / "run"
    code, summary = run_json("run", tmp_path / "w.yaml", "--ranks", 2, "--data-dir", data, "--scratch", scratch)

    assert code == 1 and summary["states"] == {"finished": 7, "failed": 1}
    jobs = {(j["task"], j["idx"]): j for j in jobs_by(data).values()}
    for idx in range(3):
        try1 = data / "jobs" / "ok" / str(jobs[("ok", idx)]["job_id"]) / "try1"
        # declared outputs and the non-empty log; the empty log and undeclared files stay behind
        assert sorted(p.name for p in try1.iterdir()) == ["payload.stdout", "result.txt", "where.txt"]
        assert (try1 / "result.txt").read_text() == f"out {idx}\n"
        assert (try1 / "payload.stdout").read_text() == f"said {idx}\n"
        assert (try1 / "where.txt").read_text().startswith(str(scratch))  # it did run on scratch
    for idx in range(4):  # nothing to keep: not even a directory on the shared filesystem
        assert not (data / "jobs" / "quiet" / str(jobs[("quiet", idx)]["job_id"])).exists()
    bad = jobs[("bad", 0)]
    assert (bad["state"], bad["exit_code"], bad["error_code"]) == ("failed", 3, 1001)
    try1 = data / "jobs" / "bad" / str(bad["job_id"]) / "try1"
    assert sorted(p.name for p in try1.iterdir()) == ["debug.txt", "payload.stderr", "payload.stdout"]
    assert (try1 / "payload.stderr").read_text() == "oops\n"
    assert list(scratch.iterdir()) == []  # each rank removed its scratch directory

    # hpc-edge logs: an empty log left on scratch is an empty log, not a missing one
    env = {"HPC_EDGE_HOME": str(data)}
    run_cli("tower", "start", "--site", write_workload(tmp_path, "queues: []\n", "site.yaml"), env=env, check=True)
    try:
        ok, quiet = jobs[("ok", 1)]["job_id"], jobs[("quiet", 0)]["job_id"]
        assert run_cli("logs", ok, env=env, check=True).stdout == "said 1\n"
        for job_id, stream in ((ok, "--stderr"), (quiet, "--stdout"), (quiet, "--stderr")):
            assert run_cli("logs", job_id, stream, env=env, check=True).stdout == ""
        assert run_cli("logs", bad["job_id"], "--stderr", env=env, check=True).stdout == "oops\n"
    finally:
        run_cli("tower", "stop", env=env)


def test_a_scratch_directory_that_cannot_be_made_is_refused_before_the_run(tmp_path):
    (tmp_path / "w.yaml").write_text("tasks:\n  - name: t\n    command: /bin/true\n    count: 1\n")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_cli("run", tmp_path / "w.yaml", "--ranks", 1, "--data-dir", tmp_path / "run",
                   "--scratch", blocker / "sub")

    assert proc.returncode == 2
    assert f"--scratch {blocker / 'sub'}: cannot use it" in proc.stderr
    assert not (tmp_path / "run" / "store.sqlite").exists()
