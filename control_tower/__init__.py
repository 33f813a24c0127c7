"""The control tower: the front-end service on the login node.

It owns the store, matches ready jobs to workers, serves relays over ZeroMQ, provisions workers
through ``launchers`` and serves the HTTP API. It imports ``launchers`` and the wire protocol of
``hpc_edge``; nothing imports it back.
"""

from .provisioner import Provisioner, QueueConfig
from .service import Service, ServiceError
from .site import SiteConfig, load_site
from .store import Store, StoreError
from .tower import Tower, TowerConfig
from .workload import TaskSpec, Workload, WorkloadError, load_workload, parse_workload

__all__ = ["Provisioner", "QueueConfig", "Service", "ServiceError", "SiteConfig", "Store", "StoreError",
           "TaskSpec", "Tower", "TowerConfig", "Workload", "WorkloadError", "load_workload", "load_site",
           "parse_workload"]
