"""Where the CPU of one `hpc-edge run` goes: the tower, the MPI ranks, the payloads (per job or range).

    .venv/bin/python bench/cpu_split.py throughput 20000 [--scratch /dev/shm/x] [--dir D]
    .venv/bin/python bench/cpu_split.py eventservice 50000 [--dir D]

Runs the benchmark's own workload (bench/throughput.py or bench/eventservice.py) once, 2 ranks,
and polls every process of the run with psutil every 50 ms, keeping each one's last CPU times. Short
payloads (``/bin/true``) end between polls: their CPU is read from the ranks' reaped-children times.
Event-service payloads live long enough to be polled. Then the run's milestones from its store
(workload stored, worker submitted, relay's hello, first and last job or range, last merge, exit).
The run's directory is kept (``--dir``, default a new one under /tmp): deleting many files slows
this disk for minutes, so clean up when done.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import eventservice, throughput  # noqa: E402
from bench.harness import HPC_EDGE  # noqa: E402


def classify(cmdline: str) -> str:
    if "hpc_edge worker" in cmdline:
        return "ranks (relay + executors)"
    if "watchdog.py" in cmdline:
        return "watchdogs"
    if "control_tower.merge" in cmdline:
        return "merges (event service)"
    if (" run " in cmdline and "hpc-edge" in cmdline) or "control_tower.cli" in cmdline:
        return "tower (hpc-edge run)"
    if "es_noop" in cmdline:
        return "payloads"
    return "other (" + cmdline.split(" ")[0].rsplit("/", 1)[-1] + ")"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["throughput", "eventservice"])
    ap.add_argument("n", type=int)
    ap.add_argument("--scratch", type=Path, default=None, help="hpc-edge run --scratch (throughput)")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args(argv)
    where = args.dir or Path(tempfile.mkdtemp(prefix="hpc-edge-cpu-"))
    where.mkdir(parents=True, exist_ok=True)
    wl = where / "workload.yaml"
    wl.write_text(throughput.workload_yaml(args.n) if args.kind == "throughput"
                  else eventservice.workload_yaml(args.n, eventservice.JOBS))
    argv_run = [HPC_EDGE, "run", str(wl), "--ranks", "2", "--json", "--data-dir", str(where / "data"),
                "--fresh"]
    if args.scratch:
        argv_run += ["--scratch", str(args.scratch)]
    t0, t0_epoch = time.monotonic(), time.time()
    proc = subprocess.Popen(argv_run, cwd=where, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    top = psutil.Process(proc.pid)
    last: dict[int, tuple[str, float, float, float, float]] = {}
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                with p.oneshot():
                    t, cmd = p.cpu_times(), " ".join(p.cmdline())
                # a process on its way out reads an empty command line: it keeps the one it had
                cmd = cmd or last.get(p.pid, ("",))[0]
                last[p.pid] = (cmd, t.user, t.system, t.children_user, t.children_system)
            except psutil.Error:
                pass
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.monotonic() - t0
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    totals: dict[str, list[float]] = {}
    for cmd, user, system, c_user, c_system in last.values():
        kind = classify(cmd)
        row = totals.setdefault(kind, [0.0, 0.0, 0])
        row[0], row[1], row[2] = row[0] + user, row[1] + system, row[2] + 1
        if kind.startswith("ranks") and args.kind == "throughput":  # the /bin/true payloads they reaped
            row = totals.setdefault("payloads (reaped by the ranks)", [0.0, 0.0, 0])
            row[0], row[1] = row[0] + c_user, row[1] + c_system
    unit = "job" if args.kind == "throughput" else "range"
    print(f"{args.kind}: {args.n} {unit}s in {wall:.2f} s ({args.n / wall:,.0f}/s); states {summary.get('states')}; "
          f"directory {where}")
    for kind, (user, system, n) in sorted(totals.items(), key=lambda kv: -(kv[1][0] + kv[1][1])):
        print(f"  {kind:32s} user {user:6.2f} s  system {system:6.2f} s  = {1e6 * (user + system) / args.n:6.1f} us "
              f"per {unit}" + (f"  ({n} processes seen)" if n else ""))
    print("  timeline, seconds after the command started (from the run's store):")
    for label, t in timeline(where / "data" / "store.sqlite", args.kind):
        print(f"    {label:40s} {t - t0_epoch:7.2f}" if t is not None else f"    {label:40s}       -")
    print(f"    {'the command exited':40s} {wall:7.2f}")
    return 0 if proc.returncode == 0 else 1


def timeline(store: Path, kind: str) -> list[tuple[str, float | None]]:
    """When the run's milestones happened (epoch seconds), read-only from its store."""
    import sqlite3

    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
        rows = [("workload stored", one("SELECT min(t) FROM events WHERE kind='task'")),
                ("worker submitted", one("SELECT min(t) FROM events WHERE kind='worker' AND detail='submitted'")),
                ("relay said hello", one("SELECT min(t) FROM events WHERE kind='worker' AND detail='running'"))]
        if kind == "throughput":
            rows += [("first job started", one("SELECT min(start_time) FROM jobs")),
                     ("last job ended", one("SELECT max(end_time) FROM jobs"))]
        else:
            rows += [("first range ended", one("SELECT min(updated) FROM ranges")),
                     ("last range ended", one("SELECT max(updated) FROM ranges")),
                     ("last job merged (final)", one("SELECT max(updated) FROM jobs"))]
        return rows
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
