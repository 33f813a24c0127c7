"""Watching running payloads: looping (no CPU and no output growth), stdout/stderr size, work
directory size and memory, each against the job's limits; and reading a payload's jobReport.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path


from .errors import ErrorCode

logger = logging.getLogger(__name__)

REPORT_NAME = "jobReport.json"
MAX_REPORT_BYTES = 1 << 20


@dataclass
class Progress:
    """What was seen of a payload at its last check."""

    cpu_s: float = -1.0
    output_bytes: int = -1
    since: float = 0.0   # monotonic time of the last sign of progress


def tree_usage(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS bytes of a process and all its descendants."""
    import psutil  # here, not at import: a rank starts faster, and most runs set no limit to check

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    cpu, rss = 0.0, 0
    for proc in procs:
        try:
            times = proc.cpu_times()
            cpu += times.user + times.system + times.children_user + times.children_system
            rss += proc.memory_info().rss
        except psutil.Error:
            continue
    return cpu, rss


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (``PR_SET_CHILD_SUBREAPER``): what a
    payload starts and leaves behind (a daemon of its own session, a double fork) is reparented to
    this rank, not to init, where ``Executor.kill_strays`` finds it. False where the kernel refuses."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # 36: PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def child_pids() -> list[int]:
    """This process's children, from /proc (each thread lists those it started or adopted)."""
    pids: list[int] = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                pids.extend(map(int, f.read().split()))
        except OSError:
            continue
    return pids


_JOB_VAR = b"HPC_EDGE_JOB_ID="


def job_of(pid: int) -> int | None:
    """The job a process belongs to, by the HPC_EDGE_JOB_ID it inherited; None if it has none."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(_JOB_VAR):
            try:
                return int(entry[len(_JOB_VAR):])
            except ValueError:
                return None
    return None


def dir_bytes(path: Path, cap: int | None = None) -> int:
    """Bytes of the files under ``path`` (stops counting past ``cap``)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
        if cap is not None and total > cap:
            break
    return total


def check(run, now: float) -> tuple[ErrorCode, str] | None:
    """The first limit a running payload breaks, with a diagnostic; None if it is within them all."""
    limits = run.spec.limits
    workdir = Path(run.workdir)
    cpu, rss = tree_usage(run.pid)
    out = file_size(workdir / "payload.stdout") + file_size(workdir / "payload.stderr")
    progress: Progress = run.progress
    if cpu > progress.cpu_s + 0.01 or out != progress.output_bytes:
        progress.cpu_s, progress.output_bytes, progress.since = cpu, out, now
    if limits.max_walltime_s and now - run.start_mono >= limits.max_walltime_s:
        return ErrorCode.WALLTIME_EXCEEDED, (f"still running {now - run.start_mono:.1f} s after its start, over the "
                                             f"job's walltime limit of {limits.max_walltime_s:g} s")
    if limits.memory_mb and rss > limits.memory_mb * 2**20:
        return ErrorCode.MEMORY_EXCEEDED, f"memory {rss // 2**20} MB over the job's limit of {limits.memory_mb} MB"
    if limits.max_output_mb and out > limits.max_output_mb * 2**20:
        return ErrorCode.OUTPUT_TOO_LARGE, (f"stdout+stderr reached {out // 2**20} MB, over the limit of "
                                            f"{limits.max_output_mb} MB")
    if limits.max_workdir_mb:
        used = dir_bytes(workdir, limits.max_workdir_mb * 2**20)
        if used > limits.max_workdir_mb * 2**20:
            return ErrorCode.WORKDIR_TOO_LARGE, (f"work directory over its limit of {limits.max_workdir_mb} MB "
                                                 f"({used // 2**20} MB)")
    if limits.looping_s and now - progress.since > limits.looping_s:
        return ErrorCode.LOOPING, (f"looping: no CPU used and no output written for {now - progress.since:.0f} s "
                                   f"(limit {limits.looping_s:.0f} s)")
    return None


def read_job_report(workdir: str | Path) -> tuple[dict | None, str | None]:
    """A payload's jobReport.json (exitCode and exitMsg compulsory), or why it was refused."""
    path = os.path.join(workdir, REPORT_NAME)
    try:  # one stat, no Path objects: this runs for every payload that ends
        size = os.stat(path).st_size
    except OSError:
        return None, None
    if size > MAX_REPORT_BYTES:
        return None, f"{REPORT_NAME} of {size} bytes is over the {MAX_REPORT_BYTES}-byte limit; ignored"
    try:
        with open(path) as f:
            report = json.loads(f.read())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"{REPORT_NAME} is not valid JSON ({exc}); ignored"
    if not isinstance(report, dict) or not isinstance(report.get("exitCode"), int) \
            or isinstance(report.get("exitCode"), bool) or not isinstance(report.get("exitMsg"), str):
        return None, f"{REPORT_NAME} lacks an integer exitCode and a string exitMsg; ignored"
    return report, None


def file_size(path: str | Path) -> int:
    """A file's size; 0 if it is not there."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
