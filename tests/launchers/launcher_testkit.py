"""Helpers for the launcher tests: recorded scheduler outputs, a fake run_command, a fixed spec."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from launchers import WorkerSpec

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = Path(__file__).parent / "golden"


def recorded(name: str) -> str:
    """A fixture's recorded text, without its leading '# ' origin header."""
    lines = (FIXTURES / name).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("# "):
        lines.pop(0)
    return "".join(lines)


def recorded_header(name: str) -> dict[str, str]:
    """The 'key: value' lines of a fixture's header (command, exit code)."""
    header = {}
    for line in (FIXTURES / name).read_text().splitlines():
        if not line.startswith("# "):
            break
        key, sep, value = line[2:].partition(": ")
        if sep:
            header[key] = value
    return header


def recorded_argv(name: str) -> list[str]:
    """The recorded command line of a fixture, as a list of words."""
    return shlex.split(recorded_header(name)["command"])


def recorded_job_ids(name: str) -> list[str]:
    """The job ids a recorded Slurm command asked about, in order (from '--jobs=a,b,c')."""
    match = re.search(r"--jobs=([\d,]+)", recorded_header(name)["command"])
    assert match, f"{name}: no --jobs= in its recorded command"
    return match.group(1).split(",")


class FakeCommands:
    """Stands in for run_command: answers argv prefixes with recorded text (or raises), logs calls."""

    def __init__(self):
        self.calls: list[tuple[list[str], str | None]] = []
        self.answers: list[tuple[list[str], object]] = []

    def answer(self, prefix: list[str], result) -> None:
        self.answers.append((prefix, result))

    def __call__(self, argv, timeout=60.0, input_text=None):
        self.calls.append((list(argv), input_text))
        for prefix, result in self.answers:
            if argv[: len(prefix)] == prefix:
                if isinstance(result, Exception):
                    raise result
                return result
        raise AssertionError(f"unexpected command {argv}")


def golden_spec(**changes) -> WorkerSpec:
    """The fixed worker the golden scripts are rendered from."""
    spec = dict(
        worker_id="w-000042",
        command=["/opt/hpc-edge/bin/python", "-m", "hpc_edge", "worker", "--tower", "tcp://login01:5555",
                 "--label", "it's a test"],
        workdir=Path("/scratch/edge/w-000042"),
        nodes=2,
        ranks_per_node=4,
        cores_per_rank=2,
        gpus_per_node=1,
        walltime_s=5400,
        env={"OMP_NUM_THREADS": "2", "EDGE_MSG": "hello $USER; bye"},
        job_name="edge-w-000042",
        account="proj42",
        partition="regular",
        setup_lines=["module load python/3.11", "source /opt/site/edge-env.sh"],
        warning_signal_s=90,
    )
    spec.update(changes)
    return WorkerSpec(**spec)
