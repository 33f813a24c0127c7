"""hpc-edge, node side: the MPI job's relay and ranks, the payload runner, and the wire protocol
shared with the control tower. Nothing here imports ``control_tower``: nodes run without it.

The names below load on first use: a payload that imports only ``hpc_edge.eventservice`` starts
without pydantic or ZeroMQ (it starts once per job, and event-service jobs wait for it)."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {"EdgeError": "errors", "ErrorCode": "errors", "PayloadError": "errors", "ProtocolError": "errors",
         "VERSION": "protocol", "JobEvent": "protocol", "JobSpec": "protocol", "RankInfo": "protocol",
         "decode": "protocol", "encode": "protocol"}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hpc_edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
