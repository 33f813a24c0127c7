"""Peer: Parsl HighThroughputExecutor (LocalProvider, 2 workers) running a bash_app ``true`` N times.

Runs inside bench/.peers-venv. Usage: python parsl_true.py N WORKERS RUN_DIR
Prints one JSON line {"n", "workers", "startup_s", "inner_s", "cleanup_s", "parsl"}: startup is
``parsl.load`` (interchange and workers coming up), inner is from the first submit to the last
result, cleanup is ``dfk.cleanup()``.
"""

import json
import logging
import sys
import time

import parsl
from parsl.app.app import bash_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider


@bash_app
def true_app():
    return "true"


def main() -> None:
    n, workers, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    config = Config(
        executors=[HighThroughputExecutor(
            label="htex", address="127.0.0.1", max_workers_per_node=workers, cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))],
        run_dir=run_dir, strategy="none", initialize_logging=False)
    logging.getLogger("parsl").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    dfk = parsl.load(config)
    t1 = time.perf_counter()
    futures = [true_app() for _ in range(n)]
    codes = [f.result() for f in futures]
    t2 = time.perf_counter()
    dfk.cleanup()
    t3 = time.perf_counter()
    failed = sum(1 for c in codes if c != 0)
    if failed:
        sys.exit(f"{failed} of {n} bash_app tasks failed")
    print(json.dumps({"n": n, "workers": workers, "startup_s": t1 - t0, "inner_s": t2 - t1,
                      "cleanup_s": t3 - t2, "parsl": parsl.__version__}))


if __name__ == "__main__":
    main()
