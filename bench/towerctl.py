"""A tower started the way a user starts one (``hpc-edge tower start``), for the benchmarks that load it.

Also the pieces a simulated relay needs: the tower's ZeroMQ address and a CURVE-keyed DEALER whose
identity is its worker id.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import psutil
import zmq

from hpc_edge import protocol as p
from hpc_edge.keys import client_curve

from .harness import HPC_EDGE, BenchError, tail, timed

SITE_NO_QUEUES = """name: bench-no-queues
# No queues: this tower launches no real workers; the benchmark's own clients play the relays.
tower:
  bind: tcp://127.0.0.1:0
  heartbeat_s: 30
  lost_after_s: {lost_after_s}
  idle_drain_s: 3600
api:
  bind: 127.0.0.1:0
provision_interval_s: 5
queues: []
"""


class BenchTower:
    def __init__(self, home: Path, lost_after_s: float = 3600, site_text: str | None = None):
        """``site_text``: the site config to start with (default: no queues, relays lost after ``lost_after_s``)."""
        self.home = home
        self.site = home.parent / f"{home.name}-site.yaml"
        self.site_text = site_text or SITE_NO_QUEUES.format(lost_after_s=lost_after_s)
        self.info: dict = {}
        self.proc: psutil.Process | None = None

    def start(self) -> float:
        """Start it; the wall-clock of ``hpc-edge tower start``."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.site.write_text(self.site_text)
        got = timed([HPC_EDGE, "tower", "start", "--data-dir", self.home, "--site", self.site,
                     "--log-level", "WARNING"], timeout=120)
        if got.returncode != 0:
            raise BenchError(f"hpc-edge tower start exited {got.returncode}: {tail(got.stderr)}")
        self.info = json.loads((self.home / "tower.json").read_text())
        self.proc = psutil.Process(self.info["pid"])
        return got.wall_s

    @property
    def address(self) -> str:
        return self.info["tower"]

    @property
    def api(self) -> str:
        return self.info["api"]

    def rss_mib(self) -> float:
        return self.proc.memory_info().rss / 2**20

    def submit(self, workload: Path, timeout: float = 3600) -> tuple[float, str | None]:
        """(wall-clock of ``hpc-edge submit``, None or why it failed)."""
        got = timed([HPC_EDGE, "submit", workload, "--data-dir", self.home], timeout=timeout)
        return got.wall_s, None if got.returncode == 0 else f"exit {got.returncode}: {tail(got.stderr, 300)}"

    def status(self, timeout: float = 30) -> dict:
        with urllib.request.urlopen(self.api + "/api/status", timeout=timeout) as response:
            return json.loads(response.read())

    def wait_ready(self, n: int, since: float, timeout: float) -> float | None:
        """Seconds from ``since`` (perf_counter) until /api/status counts n jobs in all; None on timeout."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                st = self.status(timeout=60)
                if sum(st["totals"].values()) >= n:
                    return time.perf_counter() - since
            except OSError:
                pass
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        if self.proc is None or not self.proc.is_running():
            return
        got = timed([HPC_EDGE, "tower", "stop", "--data-dir", self.home], timeout=180)
        if got.returncode != 0:
            raise BenchError(f"hpc-edge tower stop exited {got.returncode}: {tail(got.stderr)}")

    def kill(self) -> None:
        """Last resort for a tower this benchmark started (by its pid)."""
        if self.proc is not None and self.proc.is_running():
            self.proc.kill()


def write_true_workload(path: Path, n: int, name: str = "bench-load") -> Path:
    path.write_text(f"name: {name}\ntasks:\n  - name: \"true\"\n    command: /bin/true\n    count: {n}\n"
                    f"    walltime: 1m\n")
    return path


def relay_socket(ctx: zmq.Context, address: str, keys: Path, worker_id: str) -> zmq.Socket:
    """A DEALER like a relay's: identity = worker id, CURVE keys from the tower's data dir."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, worker_id.encode())
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = client_curve(keys)
    sock.connect(address)
    return sock


def hello(worker_id: str, cores: int = 1) -> bytes:
    return p.encode(p.Hello(worker_id=worker_id, ranks=[p.RankInfo(rank=0, host="bench-sim", cores=cores,
                                                                  memory_mb=4096)]))
