"""The tower's Prometheus metrics (``GET /metrics``), read from its state at each scrape: nothing is
counted on the per-job path for them."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CONTENT_TYPE", "exposition", "registry_for"]

JOB_STATES = ("activated", "sent", "running", "finished", "failed", "cancelled")


class TowerCollector:
    def __init__(self, service):
        self.service = service

    def collect(self):
        tower, store = self.service.tower, self.service.store
        st = tower.status()
        jobs = GaugeMetricFamily("hpc_edge_jobs", "Jobs by task and state", labels=["task_id", "task", "state"])
        for task in st["tasks"]:
            for state in dict.fromkeys([*JOB_STATES, *task["states"]]):
                jobs.add_metric([str(task["task_id"]), task["name"], state], task["states"].get(state, 0))
        yield jobs
        yield GaugeMetricFamily("hpc_edge_jobs_ready", "Jobs ready to be dispatched", value=st["ready"])
        ranges = GaugeMetricFamily("hpc_edge_ranges", "Event ranges by state", labels=["state"])
        for state, n in sorted(st["ranges"].items()):
            ranges.add_metric([state], n)
        yield ranges
        yield GaugeMetricFamily("hpc_edge_relays_connected", "Relays (MPI jobs) the tower hears from",
                                value=st["workers"])
        workers = GaugeMetricFamily("hpc_edge_workers", "Workers (batch jobs) by state", labels=["state"])
        for state, n in store.worker_states().items():
            workers.add_metric([state], n)
        yield workers
        messages = CounterMetricFamily("hpc_edge_relay_messages", "Messages handled from relays, by kind",
                                       labels=["kind"])
        for kind, n in sorted(st["stats"].items()):
            messages.add_metric([kind], n)
        yield messages
        rejected = CounterMetricFamily("hpc_edge_rejected", "Messages, frames and connections refused",
                                       labels=["what"])
        for what, n in sorted(st["rejected"].items()):
            rejected.add_metric([what], n)
        yield rejected
        yield GaugeMetricFamily("hpc_edge_store_writable", "1 while the store takes writes, 0 once one failed",
                                value=0 if store.failed is not None else 1)
        yield GaugeMetricFamily("hpc_edge_uptime_seconds", "Seconds since the tower started", value=st["uptime_s"])


def registry_for(service) -> CollectorRegistry:
    """The tower's metrics and its process's (CPU seconds, resident memory, open descriptors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TowerCollector(service))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
