"""``python -m hpc_edge worker ...``: the node-side entry point of an MPI job."""

import sys


def _main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] != "worker":
        print("usage: python -m hpc_edge worker --tower ADDR --worker-id ID [options]", file=sys.stderr)
        return 2
    from .worker import main

    return main(sys.argv[2:])


def _exit_now(status: int) -> None:
    """End the rank once its work is over: MPI finalised, the relay's socket flushed and closed,
    logs flushed; then no interpreter teardown of every module and object (tens of milliseconds that
    the MPI job, and whoever waits for it, pays for nothing)."""
    import logging
    import os

    zmq = sys.modules.get("zmq")
    if zmq is not None:
        zmq.Context.instance().destroy(linger=2000)  # what the relay's socket still holds goes out first
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == "__main__":
    _exit_now(_main())
