"""``python -m hpc_edge worker ...``: the node-side entry point of an MPI job."""

import sys


def _main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] != "worker":
        print("usage: python -m hpc_edge worker --tower ADDR --worker-id ID [options]", file=sys.stderr)
        return 2
    from .worker import main

    return main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(_main())
