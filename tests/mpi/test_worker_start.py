"""How a worker's ranks start MPI: settings of our own for MPI_Init, never passed on to the payloads."""

from __future__ import annotations

from pathlib import Path

from hpc_edge.worker import MPI_START_ENV, quiet_mpi_start
from tests.helpers import jobs_by, run_json, write_workload

ENV_WORKLOAD = "tasks:\n  - name: env\n    command: env\n    count: 2\n"


def payload_env(data: Path) -> list[dict[str, str]]:
    """Each payload's environment, as ``env`` printed it."""
    envs = []
    for job in jobs_by(data).values():
        out = (Path(job["workdir"]) / "payload.stdout").read_text()
        envs.append(dict(line.split("=", 1) for line in out.splitlines() if "=" in line))
    return envs


def test_the_start_up_settings_fill_in_only_what_the_site_left_unset():
    environ = {"UCX_MEM_EVENTS": "yes", "PATH": "/bin"}
    assert quiet_mpi_start(environ) == []
    assert environ == {"UCX_MEM_EVENTS": "yes", "PATH": "/bin"}
    environ = {"PATH": "/bin"}
    assert quiet_mpi_start(environ) == list(MPI_START_ENV)
    assert environ == {"PATH": "/bin", **MPI_START_ENV}


def test_payloads_get_the_environment_the_site_gave_not_the_ranks_start_up_settings(tmp_path, monkeypatch):
    for name in MPI_START_ENV:
        monkeypatch.delenv(name, raising=False)
    code, summary = run_json("run", write_workload(tmp_path, ENV_WORKLOAD), "--ranks", 2,
                             "--data-dir", tmp_path / "run")
    assert code == 0 and summary["states"] == {"finished": 2}, summary
    envs = payload_env(tmp_path / "run")
    assert len(envs) == 2 and all(env["HPC_EDGE_JOB_ID"] for env in envs)  # we read real environments
    for env in envs:
        assert not set(MPI_START_ENV) & set(env), f"a start-up setting reached a payload: {sorted(env)}"


def test_a_setting_the_site_made_reaches_the_payloads_unchanged(tmp_path):
    code, summary = run_json("run", write_workload(tmp_path, ENV_WORKLOAD), "--ranks", 2,
                             "--data-dir", tmp_path / "run", env={"UCX_MEM_EVENTS": "yes"})
    assert code == 0 and summary["states"] == {"finished": 2}, summary
    assert [env.get("UCX_MEM_EVENTS") for env in payload_env(tmp_path / "run")] == ["yes", "yes"]
