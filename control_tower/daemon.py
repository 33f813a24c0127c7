"""``hpc-edge tower start|stop``: the tower as a background service with a pidfile and a log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .service import INFO_NAME, Service, ServiceError, claim_data_dir
from .site import SiteConfig, load_site

logger = logging.getLogger(__name__)

from .paths import LOG_NAME, PID_NAME


def running_pid(data_dir: Path) -> int | None:
    """The pid of this data directory's tower if it is alive (a stale pidfile is ignored)."""
    try:
        pid = int((data_dir / PID_NAME).read_text().split()[0])
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE and "tower" in " ".join(proc.cmdline()):
            return pid
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    return None


def serve_foreground(data_dir: Path, site_path: Path | None, log_level: str) -> None:
    site = load_site(site_path) if site_path else SiteConfig()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service(data_dir, site.tower, site.queues, api_bind=site.api.bind,
                      provision_interval_s=site.provision_interval_s, log_level=log_level)
    service.claim()  # another tower on this directory (a daemon, an hpc-edge run): refused, its files untouched
    try:
        (data_dir / PID_NAME).write_text(f"{os.getpid()}\n")
        service.open()
        asyncio.run(_serve(service))
    finally:
        (data_dir / PID_NAME).unlink(missing_ok=True)
        service.close()


async def _serve(service: Service) -> None:
    await service.start()
    service.install_signal_handlers()
    logger.info("tower up: relays connect to %s, API on %s", service.tower.worker_address, service.api.url
                if service.api else None)
    await service.serve(until_done=False)


def start_daemon(data_dir: Path, site_path: Path | None, log_level: str, timeout_s: float = 30.0) -> dict:
    """Start ``tower start --foreground`` in its own session; return its tower.json once it serves."""
    if site_path:
        load_site(site_path)  # refuse a bad site config here, with its line, not in the log
    claim_data_dir(data_dir).release()  # refuse here, in one line, if another tower holds it
    (data_dir / INFO_NAME).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "control_tower.cli", "tower", "start", "--foreground",
            "--data-dir", str(data_dir), "--log-level", log_level]
    if site_path:
        argv += ["--site", str(Path(site_path).resolve())]
    with open(data_dir / LOG_NAME, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                cwd=data_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (data_dir / LOG_NAME).read_text(errors="replace").splitlines()[-5:]
            raise ServiceError(f"the tower exited at start ({proc.returncode}); {data_dir / LOG_NAME} says:\n"
                               + "\n".join(tail))
        try:
            info = json.loads((data_dir / INFO_NAME).read_text())
            if info.get("pid") == proc.pid:
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise ServiceError(f"the tower did not come up within {timeout_s:.0f} s; see {data_dir / LOG_NAME}")


def stop_daemon(data_dir: Path, timeout_s: float = 60.0) -> int:
    pid = running_pid(data_dir)
    if pid is None:
        raise ServiceError(f"no tower is running on {data_dir}")
    os.kill(pid, signal.SIGTERM)
    try:
        psutil.Process(pid).wait(timeout_s)
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
        raise ServiceError(f"tower pid {pid} did not stop within {timeout_s:.0f} s; killed it") from None
    except psutil.NoSuchProcess:
        pass
    return pid
