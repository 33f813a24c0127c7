"""``python -m hpc_edge worker ...``: the node-side entry point of an MPI job."""

import sys


def _main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] != "worker":
        print("usage: python -m hpc_edge worker --tower ADDR --worker-id ID [options]", file=sys.stderr)
        return 2
    from .worker import main

    return main(sys.argv[2:])


def _end(status: int) -> None:
    """End the rank once its work is over: the relay's socket flushed and closed, MPI finalised,
    then no interpreter teardown."""
    from .exiting import exit_now

    zmq = sys.modules.get("zmq")
    if zmq is not None:
        zmq.Context.instance().destroy(linger=2000)  # what the relay's socket still holds goes out first
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()
    exit_now(status)


if __name__ == "__main__":
    _end(_main())
