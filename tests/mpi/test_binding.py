"""Local workers' ranks bound to cores of their own, with the real mpiexec: payloads inherit them.

The tests limit themselves (and so everything they start) to two CPUs, as on a 2-core machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from launchers import WorkerSpec, get_launcher
from tests.helpers import jobs_by, run_json, wait_for, write_workload

AFFINITY_THEN_WAIT = (
    "import os, sys, time\n"
    "cpus = ' '.join(map(str, sorted(os.sched_getaffinity(0))))\n"
    "os.write(1, f\"{os.environ['PMI_RANK']} {cpus}\\n\".encode())  # one write: mpiexec merges the ranks' output\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.01)\n")


@pytest.fixture
def two_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip(f"needs 2 CPUs to bind 2 ranks to; this process may use {len(cpus)}")
    os.sched_setaffinity(0, cpus[:2])
    try:
        yield set(cpus[:2])
    finally:
        os.sched_setaffinity(0, cpus)


def cpu_list(text: str) -> set[int]:
    """``0-2,5`` (as /proc/PID/status writes Cpus_allowed_list) as a set."""
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def payload_cpus(data: Path) -> dict[int, list[set[int]]]:
    """rank -> the CPUs each of its payloads was allowed, from their stdout."""
    seen: dict[int, list[set[int]]] = {}
    for job in jobs_by(data).values():
        out = (Path(job["workdir"]) / "payload.stdout").read_text()
        allowed = next(line for line in out.splitlines() if line.startswith("Cpus_allowed_list:"))
        seen.setdefault(job["rank"], []).append(cpu_list(allowed.split(":", 1)[1].strip()))
    return seen


def test_a_run_sized_to_the_machine_binds_each_rank_and_its_payloads_to_a_core(tmp_path, two_cpus):
    wl = write_workload(tmp_path, "tasks:\n  - name: where\n"
                                  "    command: grep Cpus_allowed_list /proc/self/status\n"
                                  "    count: 6\n")
    code, summary = run_json("run", wl, "--ranks", 2, "--data-dir", tmp_path / "run")

    assert code == 0 and summary["states"] == {"finished": 6}
    seen = payload_cpus(tmp_path / "run")
    assert sorted(seen) == [0, 1]  # the relay's first request fills every rank
    cores = {rank: sets[0] for rank, sets in seen.items()}
    assert all(len(c) == 1 for c in cores.values()) and cores[0] | cores[1] == two_cpus
    assert all(s == cores[rank] for rank, sets in seen.items() for s in sets)  # each payload on its rank's core


def test_a_run_taking_part_of_the_machine_floats(tmp_path, two_cpus):
    wl = write_workload(tmp_path, "tasks:\n  - name: where\n    command: grep Cpus_allowed_list /proc/self/status\n"
                                  "    count: 2\n")
    code, summary = run_json("run", wl, "--ranks", 1, "--data-dir", tmp_path / "run")

    assert code == 0
    assert payload_cpus(tmp_path / "run") == {0: [two_cpus, two_cpus]}


def test_a_second_live_worker_floats_and_cores_are_bound_again_once_free(tmp_path, two_cpus):
    launcher = get_launcher("local")
    flag = tmp_path / "go"

    def submit(name: str) -> tuple[str, WorkerSpec]:
        spec = WorkerSpec(worker_id=name, command=[sys.executable, "-c", AFFINITY_THEN_WAIT, str(flag)],
                          workdir=tmp_path / name, ranks_per_node=2, cores_per_rank=1)
        return launcher.submit(spec), spec

    def both_ranks_said(spec: WorkerSpec) -> list[str] | None:
        lines = spec.stdout_path.read_text().splitlines() if spec.stdout_path.exists() else []
        return lines if len(lines) == 2 else None

    def affinities(spec: WorkerSpec) -> dict[int, set[int]]:
        lines = wait_for(lambda: both_ranks_said(spec), 60, f"both ranks of {spec.worker_id} to say where they run")
        return {int(rank): set(map(int, cpus)) for rank, *cpus in (line.split() for line in lines)}

    started: list[str] = []
    try:
        first, spec1 = submit("w1")
        started.append(first)
        bound = affinities(spec1)
        assert all(len(c) == 1 for c in bound.values()) and bound[0] | bound[1] == two_cpus
        second, spec2 = submit("w2")  # w1 still holds both cores
        started.append(second)
        assert affinities(spec2) == {0: two_cpus, 1: two_cpus}
        flag.write_text("")
        assert launcher.wait([first, second], 60)
        flag.unlink()
        third, spec3 = submit("w3")  # the cores are free again
        started.append(third)
        assert affinities(spec3) == bound
    finally:  # the workers end whatever the outcome: none is left waiting for the flag
        flag.write_text("")
        assert launcher.wait(started, 60)
