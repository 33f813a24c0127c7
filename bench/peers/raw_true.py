"""Peer: raw ``subprocess.run(['/bin/true'])`` from P processes (the floor any tool pays per payload).

Usage: python raw_true.py N PROCS   -> prints one JSON line {"n", "procs", "inner_s"}
"""

import json
import multiprocessing
import subprocess
import sys
import time


def worker(count: int) -> None:
    for _ in range(count):
        subprocess.run(["/bin/true"], check=True)


def main() -> None:
    n, procs = int(sys.argv[1]), int(sys.argv[2])
    shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    started = time.perf_counter()
    workers = [multiprocessing.Process(target=worker, args=(share,)) for share in shares]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    inner = time.perf_counter() - started
    if any(w.exitcode != 0 for w in workers):
        sys.exit(f"a worker failed: exit codes {[w.exitcode for w in workers]}")
    print(json.dumps({"n": n, "procs": procs, "inner_s": inner}))


if __name__ == "__main__":
    main()
