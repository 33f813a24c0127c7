"""The MPI job's entry point: ``mpiexec -n N python -m hpc_edge worker --tower ADDR --worker-id W``.

Rank 0 becomes the relay; every rank (rank 0 too) runs payloads on the cores it owns.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

from .watchdog import Watchdog, shared_memory_files

logger = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m hpc_edge worker", description=__doc__)
    link = ap.add_mutually_exclusive_group(required=True)
    link.add_argument("--tower", help="the tower's ZeroMQ address, e.g. tcp://login1:5555")
    link.add_argument("--messenger-dir", type=Path,
                      help="a per-worker directory on a shared filesystem, for nodes that cannot reach the tower")
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--batch-id", default=os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
                    or os.environ.get("LSB_JOBID"))
    ap.add_argument("--keys", type=Path, help="directory with client.key_secret and server.key (CURVE)")
    ap.add_argument("--cores-per-rank", type=int, default=0, help="0: this node's cores / its ranks")
    ap.add_argument("--memory-per-rank-mb", type=int, default=0, help="0: this node's memory / its ranks")
    ap.add_argument("--ends-at", type=float, default=None, help="allocation end (Unix time)")
    ap.add_argument("--walltime-s", type=float, default=None,
                    help="allocation walltime; the end is this long after the worker starts (if no --ends-at)")
    ap.add_argument("--walltime-grace-s", type=float, default=60.0)
    ap.add_argument("--start-timeout-s", type=float, default=600.0,
                    help="stop if no tower has answered this long after the start (0: wait for ever)")
    ap.add_argument("--scratch", type=Path, default=None,
                    help="node-local directory (e.g. /dev/shm or $TMPDIR) where payloads run; their outputs, "
                         "non-empty logs (everything, if they fail) move to the shared job directory at the end")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # the watchdog starts before MPI_Init creates the node's shared memory, so that whatever this rank
    # leaves of it, even if killed during MPI's start-up, goes when the rank does
    watchdog = Watchdog()
    watchdog.sweep_segments_since(time.time_ns())
    # MPI_Init waits for every rank of the node to arrive, spinning: the ranks get there first, with
    # nothing but the watchdog before, and do their imports after, side by side
    ours = quiet_mpi_start(os.environ)
    from mpi4py import MPI

    for name in ours:  # payloads get the environment the site gave this rank
        os.environ.pop(name, None)
    from .executor import Executor
    from .gcpolicy import settle
    from .monitor import become_subreaper
    from .protocol import RankInfo

    become_subreaper()  # what payloads leave behind comes back to this rank (Executor.kill_strays)

    comm = MPI.COMM_WORLD
    wait_quietly(comm.Ibarrier())  # every rank is past its imports: the collectives below wait for none
    rank = comm.Get_rank()
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")
    local_ranks = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    cores = args.cores_per_rank or max(1, (os.cpu_count() or 1) // local_ranks)
    memory = args.memory_per_rank_mb or physical_memory() // local_ranks // 2**20
    scratch = None
    if args.scratch is not None:
        scratch = args.scratch / f"hpc-edge-{args.worker_id}-rank{rank}"
        try:
            scratch.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logging.getLogger(__name__).error("rank %d: scratch directory %s: %s", rank, scratch, exc)
            comm.Abort(2)
    executor = Executor(rank=rank, cores=cores, memory_mb=memory, scratch=None if scratch is None else str(scratch),
                        watchdog=watchdog)
    if executor.watchdog:
        executor.watchdog.guard_files(shared_memory_files())
        if scratch is not None:
            executor.watchdog.guard_tree(str(scratch))
    infos = comm.gather(RankInfo(rank=rank, host=socket.gethostname(), cores=cores, memory_mb=memory), root=0)
    if rank != 0:
        from .rank import rank_loop

        settle()
        try:
            rank_loop(comm, executor)
        finally:
            executor.close()
        return 0
    from .keys import client_curve  # only the relay talks to the tower
    from .relay import Relay, RelayConfig

    ends_at = args.ends_at
    if ends_at is None and os.environ.get("HPC_EDGE_ALLOCATION_END"):  # set by the batch script
        ends_at = float(os.environ["HPC_EDGE_ALLOCATION_END"])
    if ends_at is None and args.walltime_s:
        ends_at = time.time() + args.walltime_s
    config = RelayConfig(tower=args.tower, worker_id=args.worker_id, batch_id=args.batch_id,
                         ends_at=ends_at, walltime_grace_s=args.walltime_grace_s,
                         start_timeout_s=args.start_timeout_s or None,
                         curve=client_curve(args.keys) if args.keys and args.tower else None,
                         messenger_dir=args.messenger_dir)
    settle()
    try:
        Relay(comm, executor, infos, config).run()
    except Exception:
        logger.exception("relay %s failed; aborting the MPI job", args.worker_id)
        executor.hard_kill_all()
        executor.close()
        comm.Abort(1)
    executor.close()
    return 0


# Set for this rank's MPI start-up only, where the site has not set them (bench/README.md has the
# figures).
# - UCX (MPICH's transport here) installs memory hooks at MPI_Init for its registration cache, which
#   only large zero-copy transfers use, and the ranks send each other small messages. Here a 2-rank
#   MPI start took 172.63 ms of CPU with the hooks and 88.91 ms without (376,417 and 371 sched_yield
#   calls).
# - MPICH waits in blocking calls (MPI_Init's wait for the node's other ranks among them) by spinning
#   on sched_yield, or with "heavy yield" by sleeping in clock_nanosleep: a rank that waits so for
#   another still starting leaves it the core. A 20,000-job run here made 246,427 sched_yield calls
#   without it (another, recorded, 149,392, all in the first 0.21 s of its ranks), none with it.
MPI_START_ENV = {"UCX_MEM_EVENTS": "no", "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}


def quiet_mpi_start(environ) -> list[str]:
    """Put MPI_START_ENV's settings the site left unset into environ; return their names."""
    ours = [name for name in MPI_START_ENV if name not in environ]
    for name in ours:
        environ[name] = MPI_START_ENV[name]
    return ours


def wait_quietly(request) -> None:
    """Wait for an MPI request, sleeping between tests. MPICH's blocking calls wait by spinning on
    sched_yield: a rank that waits so for another still starting takes a core from it (and from the
    tower, on a login node)."""
    while not request.Test():
        time.sleep(0.001)


def physical_memory() -> int:
    """Bytes of RAM on this node (what psutil.virtual_memory().total says, without importing it)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
