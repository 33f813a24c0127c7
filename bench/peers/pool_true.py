"""Peer: ``concurrent.futures.ProcessPoolExecutor(P)`` running ``subprocess.run(['/bin/true'])`` per task.

Written the way a user would: one ``pool.map`` over N tasks, default chunksize.
Usage: python pool_true.py N PROCS   -> prints one JSON line {"n", "procs", "inner_s"}
"""

import json
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def run_true(_index: int) -> int:
    return subprocess.run(["/bin/true"]).returncode


def main() -> None:
    n, procs = int(sys.argv[1]), int(sys.argv[2])
    started = time.perf_counter()
    with ProcessPoolExecutor(procs) as pool:
        codes = list(pool.map(run_true, range(n)))
    inner = time.perf_counter() - started
    failed = sum(1 for c in codes if c != 0)
    if failed:
        sys.exit(f"{failed} of {n} tasks failed")
    print(json.dumps({"n": n, "procs": procs, "inner_s": inner}))


if __name__ == "__main__":
    main()
