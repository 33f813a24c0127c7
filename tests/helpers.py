"""Helpers for tests that run the real command line, mpiexec and the store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
HPC_EDGE = [sys.executable, "-m", "control_tower.cli"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 240, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``hpc-edge ARGS`` as a user would, in a real subprocess."""
    proc = subprocess.run([*HPC_EDGE, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"hpc-edge {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def run_json(*args: str, **kw) -> tuple[int, dict]:
    proc = run_cli(*args, "--json", **kw)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON summary (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}") from None


def query(data_dir: Path, sql: str, args=()) -> list[tuple]:
    """Read the run's store (read-only; a live tower may be writing it: WAL allows that)."""
    db = sqlite3.connect(f"file:{data_dir / 'store.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def scalar(data_dir: Path, sql: str, args=()) -> int:
    """One number from the store, or 0 while the run has not created it (for polling)."""
    if not (data_dir / "store.sqlite").exists():
        return 0
    try:
        return query(data_dir, sql, args)[0][0] or 0
    except sqlite3.OperationalError:
        return 0


def jobs_by(data_dir: Path) -> dict[int, dict]:
    db = sqlite3.connect(f"file:{data_dir / 'store.sqlite'}?mode=ro", uri=True, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        rows = db.execute("SELECT j.*, t.name AS task FROM jobs j JOIN tasks t USING (task_id)").fetchall()
        return {r["job_id"]: dict(r) for r in rows}
    finally:
        db.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll a condition until it holds (a deadline, not a sleep standing in for an event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def processes_under(path: Path) -> list[psutil.Process]:
    """Live processes started for a run: their command line or working directory is under ``path``."""
    found, path = [], str(path)
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            if path in cmd or (proc.info["cwd"] or "").startswith(path):
                if proc.pid != os.getpid():
                    found.append(proc)
        except psutil.Error:
            continue
    return found


def write_workload(tmp_path: Path, text: str, name: str = "workload.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def local_tower_site(tmp_path: Path, tower: str = "{heartbeat_s: 2, idle_drain_s: 60}",
                     provision_interval_s: float = 0.5) -> tuple[Path, dict, Path]:
    """(home, env, site) for a daemon tower whose one queue starts 2-rank local workers (one at a time)."""
    home = tmp_path / "tower"
    site = write_workload(tmp_path, f"""
tower: {tower}
provision_interval_s: {provision_interval_s}
queues: [{{name: local, launcher: local, ranks_per_node: 2, cores_per_rank: 1}}]
""", "site.yaml")
    return home, {"HPC_EDGE_HOME": str(home)}, site


SHM = Path("/dev/shm")


def mpi_segments() -> set[Path]:
    """MPICH's shared-memory files (named in /dev/shm; MPI_Finalize removes them)."""
    return set(SHM.glob("mpich_shm_*"))


def remove_orphan_segments(before: set[Path]) -> None:
    """Remove MPICH shared-memory files made since ``before`` that no process maps any more: left by
    ranks of a test's own MPI program that were killed (the product's workers have a watchdog)."""
    from hpc_edge.watchdog import shared_memory_files

    new = {str(p) for p in mpi_segments() - before}
    if not new:
        return
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            new -= set(shared_memory_files(str(maps)))
        except OSError:
            continue  # the process is gone
    for path in new:
        Path(path).unlink(missing_ok=True)
