"""A small numpy payload: estimate pi from seeded random points and write the result with h5py.

Usage: python estimate_pi.py INDEX [POINTS] -> result.h5 in the working directory. The seed is the
index, so every job's numbers can be checked afterwards.
"""

import sys

import h5py
import numpy as np


def main() -> int:
    index = int(sys.argv[1])
    points = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    rng = np.random.default_rng(index)
    xy = rng.random((points, 2))
    inside = int(np.count_nonzero((xy ** 2).sum(axis=1) <= 1.0))
    with h5py.File("result.h5", "w") as f:
        f.create_dataset("inside", data=np.array([inside], dtype=np.int64))
        f.attrs["index"] = index
        f.attrs["points"] = points
        f.attrs["pi_estimate"] = 4.0 * inside / points
    print(f"job {index}: pi ~ {4.0 * inside / points:.5f} from {points} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
