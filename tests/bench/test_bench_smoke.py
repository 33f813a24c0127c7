"""The bench harness works: a small quick run writes well-formed JSON lines (figures are not judged)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import slurm_available

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.bench_smoke

FIGURE_KEYS = {"status", "unit", "repeats", "median", "min", "max", "values"}
HAVE_CC = bool(shutil.which("cc") or shutil.which("gcc"))


def test_quick_throughput_writes_well_formed_records(tmp_path):
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", "throughput",
         "--throughput-n", "200", "--repeats", "1", "--no-parsl", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "TMPDIR": str(scratch)})
    assert proc.returncode == 0, f"bench/run.py exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert list(scratch.iterdir()) == [], "the harness or a peer left files in TMPDIR"
    files = list(tmp_path.glob("*.jsonl"))
    assert len(files) == 1, f"expected one results file, found {files}"
    rows = [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]
    assert rows, "the results file is empty"
    for row in rows:
        assert row["benchmark"] == "throughput"
        assert row["figure"] and row["params"]["n"] == 200 and row["params"]["ranks"] == 2
        ours = row["ours"]
        assert FIGURE_KEYS <= set(ours), f"our figure lacks {FIGURE_KEYS - set(ours)}"
        assert ours["status"] == "ok" and ours["repeats"] == len(ours["values"]) >= 1
        assert ours["min"] <= ours["median"] <= ours["max"] and ours["min"] > 0
        assert set(row["peers"]) == {"raw_subprocess", "process_pool", "parsl_htex", "spawn_floor"}
        for name in ("raw_subprocess", "process_pool", *(["spawn_floor"] if HAVE_CC else [])):
            assert row["peers"][name]["status"] == "ok" and row["peers"][name]["median"] > 0
            assert row["ratios"][name] == pytest.approx(ours["median"] / row["peers"][name]["median"])
        assert row["peers"]["parsl_htex"]["status"].startswith("skipped: ")
        assert row["ratios"]["parsl_htex"] is None
        if not HAVE_CC:  # the C floor is built with the system's compiler, when it has one
            assert row["peers"]["spawn_floor"]["status"].startswith("skipped: no C compiler")
        for target in row["targets"]:
            assert {"text", "op", "value", "actual", "met"} <= set(target)
        assert row["met"] in (True, False, None)
        machine = row["machine"]
        assert machine["cpu_count"] >= 1 and machine["python"].count(".") == 2 and machine["hostname"]
        assert row["run"]["quick"] is True
    wall = next(r for r in rows if "wall-clock" in r["figure"])
    assert [t["text"] for t in wall["targets"]] == [">= 0.8x raw subprocess", ">= 3x Parsl HTEX"]
    assert wall["targets"][0]["met"] in (True, False)   # raw ran, so this target was judged
    assert wall["targets"][1]["met"] is None            # Parsl skipped: not judged
    cpu = [r for r in rows if r["figure"].startswith("CPU per job")]
    assert [r["label"] for r in cpu] == ["n=200 CPU per job", "n=200 CPU per job, scratch"]
    for row in cpu:
        assert row["ours"]["unit"] == "us/job" and row["targets"] == []
        extra = row["ours"]["extra"]
        for machine, payloads, waited, share in zip(row["ours"]["values"], extra["payloads_us_per_job"],
                                                    extra["waited_for_us_per_job"], extra["busy_share"]):
            assert payloads > 0 and waited > payloads  # the command's processes include its payloads
            # the machine spent at least what the command's processes did (/proc/stat counts in clock
            # ticks: a margin for that), and no more than all its cores over the wall-clock
            assert machine >= 0.75 * waited
            assert 0 < share <= (os.cpu_count() or 1) / 2 + 0.1
        assert row["peers"]["raw_subprocess"]["unit"] == "us/job" and row["peers"]["raw_subprocess"]["median"] > 0
    assert "throughput" in proc.stdout and str(files[0]) in proc.stdout.replace("\n", "")


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """``bench/run.py --quick --no-parsl``: every benchmark, small (about a minute here), once for this module."""
    out = tmp_path_factory.mktemp("bench-quick")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--no-parsl", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"bench/run.py exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    files = list(out.glob("*.jsonl"))
    assert len(files) == 1, f"expected one results file, found {files}"
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


def test_quick_bench_runs_every_benchmark(quick_bench):
    figures: dict[str, list[str]] = {}
    for row in quick_bench:
        figures.setdefault(row["benchmark"], []).append(row["figure"])
        ours = row["ours"]
        if row["benchmark"] == "batch" and not slurm_available()[0]:
            continue  # skipped without a Slurm cluster: test_quick_batch_goes_through_slurm says so
        assert ours["status"] == "ok", (row["benchmark"], row["figure"], ours["status"])
        assert ours["repeats"] == len(ours["values"]) >= 1 and ours["min"] <= ours["median"] <= ours["max"]
        assert row["run"]["quick"] is True and row["met"] in (True, False, None)
    assert sorted(figures) == ["allocation", "batch", "eventservice", "relays", "throughput", "tower_scale"]
    assert "event ranges/s over the wall-clock of `hpc-edge run`" in figures["eventservice"]
    assert "busy core-s / (core slots x makespan), from the store" in figures["allocation"]
    assert "dispatch round trip p99 (Request -> Work)" in figures["tower_scale"]


def test_quick_relays_reports_updates_and_heartbeats(quick_bench):
    rows = {r["figure"]: r for r in quick_bench if r["benchmark"] == "relays"}
    for figure in ("relays connected and welcomed", "job updates acked per second (steady window)",
                   "Update -> Ack latency p99 (steady window)", "Updates never acked (lost)",
                   "Heartbeat -> Ack latency p99 (steady window)", "Heartbeats never acked (lost)"):
        ours = rows[figure]["ours"]
        assert ours["status"] == "ok" and ours["repeats"] == len(ours["values"]) == 1, (figure, ours)
        assert rows[figure]["params"]["relays"] == 200
    assert rows["relays connected and welcomed"]["ours"]["values"] == [200]
    heartbeats = rows["Heartbeat -> Ack latency p99 (steady window)"]["ours"]
    assert heartbeats["extra"]["in_window"][0] > 0 and heartbeats["median"] > 0  # heartbeats were sent, timed
    lost = rows["Heartbeats never acked (lost)"]["ours"]
    assert lost["extra"]["sent"][0] >= heartbeats["extra"]["in_window"][0]
    assert [t["text"] for t in rows["Heartbeats never acked (lost)"]["targets"]] == ["0: every Heartbeat gets its Ack"]
    run = rows["job updates acked per second (steady window)"]["ours"]["extra"]["runs"][0]
    if len(os.sched_getaffinity(0)) >= 2:  # the tower alone on its core
        assert len(run["tower_cpus"]) == 1 and not set(run["tower_cpus"]) & set(run["generator_cpus"])


def test_quick_batch_goes_through_slurm(quick_bench):
    rows = {r["figure"]: r for r in quick_bench if r["benchmark"] == "batch"}
    ok, why = slurm_available()
    if not ok:
        (row,) = rows.values()  # one record, saying why
        assert row["ours"]["status"].startswith("skipped: ") and row["ours"]["values"] == []
        if os.environ.get("HPC_EDGE_REQUIRE_SLURM") == "1":
            pytest.fail(f"HPC_EDGE_REQUIRE_SLURM=1 but Slurm is not usable: {why}")
        pytest.skip(f"the batch benchmark needs a real Slurm cluster: {why}")
    end_to_end = rows["jobs/s from submit to the last payload's end, through Slurm"]
    first = rows["seconds from submit to the first payload's start, through Slurm"]["ours"]
    running = rows["jobs/s from the first payload's start to the last one's end, through Slurm"]["ours"]
    params = end_to_end["params"]
    assert params["n"] == 300 and params["launcher"] == "slurm" and params["partition"]
    ours = end_to_end["ours"]
    assert ours["status"] == "ok" and ours["repeats"] == 1 and ours["median"] > 0
    # the three figures come from one run's store: submit -> first start -> last end
    total_s = params["n"] / ours["median"]
    assert 0 < first["median"] < total_s
    assert running["median"] == pytest.approx(params["n"] / (total_s - first["median"]))
    for peer in ("raw_in_batch_job", "slurm_array", "srun_steps"):
        assert end_to_end["peers"][peer]["status"] == "ok" and end_to_end["peers"][peer]["median"] > 0, peer
        assert end_to_end["ratios"][peer] == pytest.approx(ours["median"] / end_to_end["peers"][peer]["median"])
    assert (params["raw_in_batch_job_jobs"], params["slurm_array_jobs"], params["srun_steps_jobs"]) == (300, 30, 10)
    assert end_to_end["peers"]["parsl_htex_slurm"]["status"].startswith("skipped: ")  # --no-parsl
