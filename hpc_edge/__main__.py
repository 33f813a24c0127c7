"""``python -m hpc_edge worker ...``: the node-side entry point of an MPI job."""

import sys


def _main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] != "worker":
        print("usage: python -m hpc_edge worker --tower ADDR --worker-id ID [options]", file=sys.stderr)
        return 2
    from .worker import main

    try:
        return main(sys.argv[2:])
    except BaseException as exc:
        if not (isinstance(exc, SystemExit) and exc.code in (0, None)):
            _abort_job()
        raise


def _abort_job() -> None:
    """This rank failed: end the whole MPI job now. The other ranks would otherwise wait for it in
    their next collective (and it for them in MPI_Finalize, which mpi4py calls at exit) until the
    tower or the batch system ended the job: a worker that never reaches the tower is cancelled after
    its queue's start_timeout_s, 600 s by default."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return
    import traceback

    traceback.print_exc()  # MPI_Abort ends this process before Python could print it
    sys.stderr.flush()
    mpi.COMM_WORLD.Abort(1)


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
