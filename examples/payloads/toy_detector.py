"""A toy detector simulation as an event-service payload.

Each event draws particles from a generator seeded with the event number (so every event's result
can be recomputed from its number alone), deposits their energy in an 8x8 calorimeter grid in
(eta, phi), and the range's events are written to one HDF5 file.

Run by hpc-edge with the AthenaMP-style protocol on stdin/stdout (see hpc_edge.eventservice).
"""

from __future__ import annotations

import sys

import h5py
import numpy as np

from hpc_edge.eventservice import EventRange, serve

GRID = 8


def simulate_event(number: int) -> dict:
    rng = np.random.default_rng(number)
    n = int(rng.poisson(20))
    energy = rng.exponential(5.0, n)
    eta = rng.uniform(-2.5, 2.5, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    calo, _, _ = np.histogram2d(eta, phi, bins=GRID, range=[[-2.5, 2.5], [-np.pi, np.pi]], weights=energy)
    return {"event_number": number, "n_particles": n, "energy_sum": float(energy.sum()),
            "calo": calo.astype(np.float32)}


def simulate_range(r: EventRange) -> str:
    events = [simulate_event(n) for n in r.events]
    path = f"{r.range_id}.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("event_number", data=np.array([e["event_number"] for e in events], dtype=np.int64))
        f.create_dataset("n_particles", data=np.array([e["n_particles"] for e in events], dtype=np.int32))
        f.create_dataset("energy_sum", data=np.array([e["energy_sum"] for e in events], dtype=np.float64))
        f.create_dataset("calo", data=np.stack([e["calo"] for e in events]))
    return path


if __name__ == "__main__":
    serve(simulate_range)
    sys.exit(0)
