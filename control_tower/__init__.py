"""The control tower: the front-end service on the login node.

It owns the store, matches ready jobs to workers, serves relays over ZeroMQ, provisions workers
through ``launchers`` and serves the HTTP API. It imports ``launchers`` and the wire protocol of
``hpc_edge``; nothing imports it back. Names are imported on first use, so the command line starts fast.
"""

from importlib import import_module

_EXPORTS = {
    "Provisioner": "provisioner", "QueueConfig": "provisioner", "Service": "service", "ServiceError": "service",
    "SiteConfig": "site", "load_site": "site", "Store": "store", "StoreError": "store", "Tower": "tower",
    "TowerConfig": "tower", "TaskSpec": "workload", "Workload": "workload", "WorkloadError": "workload",
    "load_workload": "workload", "parse_workload": "workload",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
