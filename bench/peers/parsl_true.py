"""Peer: Parsl HighThroughputExecutor (2 workers) running a bash_app ``true`` N times.

Runs inside bench/.peers-venv. Usage: python parsl_true.py N WORKERS RUN_DIR [slurm:PARTITION]
With ``slurm:PARTITION`` the workers come from a Slurm batch job (SlurmProvider: one block of one
node, WORKERS cores, not exclusive, the worker pool started on the node by the batch script), else
from this machine (LocalProvider).
Prints one JSON line {"n", "workers", "startup_s", "inner_s", "cleanup_s", "parsl"}: startup is
``parsl.load`` (the interchange coming up and, with Slurm, the block submitted), inner is from the
first submit to the last result, cleanup is ``dfk.cleanup()`` (with Slurm, the block cancelled).
"""

import json
import logging
import os
import sys
import time

import parsl
from parsl.app.app import bash_app
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider, SlurmProvider


@bash_app
def true_app():
    return "true"


def main() -> None:
    n, workers, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    where = sys.argv[4] if len(sys.argv) > 4 else "local"
    if where.startswith("slurm:"):
        # the batch job starts process_worker_pool.py by name: this venv's bin/ leads its PATH
        provider = SlurmProvider(partition=where.split(":", 1)[1], nodes_per_block=1, cores_per_node=workers,
                                 exclusive=False, init_blocks=1, min_blocks=1, max_blocks=1, walltime="00:30:00",
                                 worker_init=f"export PATH={os.path.dirname(sys.executable)}:$PATH",
                                 cmd_timeout=60)
    else:
        provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1)
    config = Config(
        executors=[HighThroughputExecutor(
            label="htex", address="127.0.0.1", max_workers_per_node=workers, cores_per_worker=1,
            provider=provider)],
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
