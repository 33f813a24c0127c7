"""The ``local`` launcher: no batch system, ``mpiexec`` on this machine (a laptop, a login node, a test).

A worker is one ``mpiexec -n RANKS`` process group started in its own session. Its batch id is
``<pid>:<worker_id>``, so a tower restarted on the same store can still tell whether it lives.

A worker sized to this machine (ranks x ``cores_per_rank`` = the cores this process may use) has
each rank bound to cores of its own, which its payloads inherit, when ``mpiexec`` is MPICH's hydra
with hwloc and no other live worker of this launcher is bound. Unbound, the ranks, their payloads
and the tower all move between cores at the scheduler's will; bound, a run of short payloads ends
sooner (bench/README.md). A worker that takes a part of the machine floats, so that two runs side by
side are never pinned to the same few cores while others idle. ``launcher_options: {bind_cores:
false}`` turns binding off.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .base import BatchState, CancelError, Launcher, LauncherError, SubmitError, WorkerSpec

logger = logging.getLogger(__name__)


def find_mpiexec() -> str:
    """The ``mpiexec`` next to this Python (the venv's MPICH) first, then the one on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec")
    if not found:
        raise SubmitError("local: no mpiexec found (install the 'mpich' package into this venv)")
    return found


def mpiexec_argv(spec: WorkerSpec, mpiexec: str, binding: list[list[int]] | None = None) -> list[str]:
    """The command line for one local worker (pure); ``binding``: the cores of each rank, in rank order."""
    bind = ["-bind-to", f"user:{cores_text(binding)}"] if binding else []
    return [mpiexec, *bind, "-n", str(spec.ranks), *spec.command]


def cores_text(binding: list[list[int]]) -> str:
    """Ranks' cores as hydra writes them: ``0+1,2+3`` (a rank's cores joined by +, ranks by commas)."""
    return ",".join("+".join(map(str, cores)) for cores in binding)


def plan_binding(ranks: int, cores_per_rank: int, usable: set[int], taken: set[int]) -> list[list[int]] | None:
    """The cores of each rank of a new worker (pure): all ``usable`` cores, ``cores_per_rank`` each in
    order, if the worker takes exactly that many and no other worker holds any (``taken``); else None."""
    if taken or ranks * cores_per_rank != len(usable):
        return None
    cores = sorted(usable)
    return [cores[i * cores_per_rank:(i + 1) * cores_per_rank] for i in range(ranks)]


def can_bind(mpiexec: str) -> bool:
    """Whether this mpiexec is MPICH's hydra built with hwloc (it takes ``-bind-to user:...``)."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    topology = next((line for line in out.splitlines() if "Topology libraries available" in line), "")
    return "HYDRA" in out and "hwloc" in topology


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, mpiexec: str | None = None, kill_grace_s: float = 10.0, bind_cores: bool = True):
        if not isinstance(bind_cores, bool):
            raise LauncherError(f"local: launcher_options.bind_cores must be true or false, not {bind_cores!r}")
        self._mpiexec = mpiexec
        self.kill_grace_s = kill_grace_s
        self.bind_cores = bind_cores
        self._procs: dict[str, subprocess.Popen] = {}
        self._adopted: set[str] = set()  # live workers of an earlier tower on this store: not our children
        self._cancelled: dict[str, float] = {}  # batch id -> when SIGTERM was sent
        self._bound: dict[str, set[int]] = {}  # batch id -> the cores its ranks are bound to
        self._can_bind: dict[str, bool] = {}  # mpiexec -> whether it can bind ranks

    def binding(self, spec: WorkerSpec, mpiexec: str) -> list[list[int]] | None:
        """Cores of their own for the ranks of a new worker, or None (they float)."""
        if not self.bind_cores:
            return None
        if mpiexec not in self._can_bind:
            self._can_bind[mpiexec] = can_bind(mpiexec)
        if not self._can_bind[mpiexec]:
            return None
        for bid in [b for b in self._bound if self._procs[b].poll() is not None]:
            del self._bound[bid]
        taken = set().union(*self._bound.values())
        return plan_binding(spec.ranks, spec.cores_per_rank, os.sched_getaffinity(0), taken)

    def submit(self, spec: WorkerSpec) -> str:
        mpiexec = self._mpiexec or find_mpiexec()
        spec.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env}
        binding = self.binding(spec, mpiexec)
        argv = mpiexec_argv(spec, mpiexec, binding)
        with open(spec.stdout_path, "ab") as out, open(spec.stderr_path, "ab") as err:
            try:
                proc = subprocess.Popen(
                    argv, cwd=spec.workdir, env=env, stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, start_new_session=True,
                )
            except OSError as exc:
                raise SubmitError(f"local: cannot start {argv[0]}: {exc}") from exc
        batch_id = f"{proc.pid}:{spec.worker_id}"
        self._procs[batch_id] = proc
        if binding:
            self._bound[batch_id] = {c for cores in binding for c in cores}
        logger.info("local: started worker %s (%d ranks%s) as pid %d", spec.worker_id, spec.ranks,
                    f", bound to cores {cores_text(binding)}" if binding else "", proc.pid)
        return batch_id

    def status(self, batch_ids: list[str]) -> dict[str, BatchState]:
        return {bid: self._state(bid) for bid in batch_ids}

    def _state(self, batch_id: str) -> BatchState:
        proc = self._procs.get(batch_id)
        if proc is not None:
            code = proc.poll()
            if code is None:
                self._escalate(batch_id, proc.pid)
                return BatchState.RUNNING
            if batch_id in self._cancelled:
                return BatchState.CANCELLED
            return BatchState.DONE if code == 0 else BatchState.FAILED
        if _alive(batch_id):
            self._adopted.add(batch_id)
            return BatchState.RUNNING
        self._adopted.discard(batch_id)
        return BatchState.UNKNOWN

    def _escalate(self, batch_id: str, pid: int) -> None:
        sent = self._cancelled.get(batch_id)
        if sent is not None and time.monotonic() - sent > self.kill_grace_s:
            _signal_group(pid, signal.SIGKILL)

    def cancel(self, batch_ids: list[str]) -> None:
        for bid in batch_ids:
            pid = _pid_of(bid)
            if pid is None:
                raise CancelError(f"local: malformed batch id {bid!r}")
            if self._state(bid).terminal:
                continue
            self._cancelled.setdefault(bid, time.monotonic())
            _signal_group(pid, signal.SIGTERM)

    def reap_all(self, timeout: float = 30.0, kill_grace_s: float | None = None) -> None:
        """Wait for every worker this launcher started or adopted to exit (cancelling those that outstay;
        ``kill_grace_s``, if given, replaces the launcher's grace between SIGTERM and SIGKILL)."""
        live = [b for b, proc in self._procs.items() if proc.poll() is None] + [b for b in self._adopted if _alive(b)]
        if kill_grace_s is None or not live:
            self._reap(live, timeout)
            return
        kept, self.kill_grace_s = self.kill_grace_s, kill_grace_s  # for this reaping only
        try:
            self._reap(live, timeout)
        finally:
            self.kill_grace_s = kept

    def _reap(self, live: list[str], timeout: float) -> None:
        if live and not self.wait(live, timeout):
            # the ranks are in process groups of their own, below mpiexec: noted now, waited for after
            tree = [p for b in live for p in _descendants(_pid_of(b))]
            self.cancel(live)
            self.wait(live, self.kill_grace_s + 5)
            _, left = psutil.wait_procs(tree, timeout=self.kill_grace_s)
            for proc in left:  # a rank whose mpiexec is gone without taking it along
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=5)

    def wait(self, batch_ids: list[str], timeout: float) -> bool:
        """Wait for workers to end, escalating to SIGKILL after the grace; True if all ended."""
        deadline = time.monotonic() + timeout
        pending = list(batch_ids)
        while pending and time.monotonic() < deadline:
            pending = [b for b in pending if not self._state(b).terminal]
            if pending:
                # wait on our own child (Popen polls it with a short back-off): its exit is seen in
                # about a millisecond, not at the next tick of a coarse sleep
                proc = self._procs.get(pending[0])
                if proc is None:  # a worker of an earlier tower: not our child
                    time.sleep(0.05)
                    continue
                try:
                    proc.wait(max(0.0, min(0.05, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
        return not pending


def _descendants(pid: int | None) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.Error, TypeError, ValueError):
        return []


def _pid_of(batch_id: str) -> int | None:
    head = batch_id.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(batch_id: str) -> bool:
    """True if the batch id's process still runs and is the worker it names (not a reused pid)."""
    pid = _pid_of(batch_id)
    worker_id = batch_id.split(":", 1)[1] if ":" in batch_id else ""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and worker_id in " ".join(proc.cmdline())
    except (psutil.Error, TypeError, ValueError):
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise CancelError(f"local: not allowed to signal process group {pid}") from exc
