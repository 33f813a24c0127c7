"""A do-nothing event-service payload: for each range, an empty output file and the done line.

The protocol (hpc_edge.eventservice) needs an output file per range that exists inside the payload's
directory, so "nothing" here is creating one empty file.
"""

import sys

from hpc_edge.eventservice import serve


def nothing(r) -> str:
    path = f"{r.range_id}.out"
    open(path, "wb").close()
    return path


if __name__ == "__main__":
    serve(nothing)
    sys.exit(0)
