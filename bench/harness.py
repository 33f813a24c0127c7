"""The bench harness's common parts: records, figures, machine facts, timed commands, the peers' venv.

Every benchmark returns ``Record``s. One record is one figure of ours (median, min, max over the
repeats), the peers' figures for the same thing from the same run, the ratios, the targets and
whether they are met. ``run.py`` prints them as a table and writes them as JSON lines.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = Path(sys.executable).parent          # the product venv (run.py is run with its python)
HPC_EDGE = str(VENV_BIN / "hpc-edge")
PEERS_VENV = BENCH / ".peers-venv"
PEERS_PYTHON = PEERS_VENV / "bin" / "python"
PEERS = BENCH / "peers"


class BenchError(Exception):
    """A benchmark could not produce its figure (the message says why)."""


# ---- figures and records ------------------------------------------------------------------------
@dataclass
class Figure:
    """One measured quantity over its repeats."""

    unit: str
    values: list[float]
    extra: dict = field(default_factory=dict)
    status: str = "ok"

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def as_dict(self) -> dict:
        vals = self.values
        return {"status": self.status, "unit": self.unit, "repeats": len(vals),
                "median": self.median, "min": min(vals) if vals else None, "max": max(vals) if vals else None,
                "values": vals, **({"extra": self.extra} if self.extra else {})}


def unavailable(status: str, unit: str = "") -> Figure:
    """A figure that could not be measured: ``skipped: why`` or ``not available: why`` or ``error: why``."""
    return Figure(unit=unit, values=[], status=status)


@dataclass
class Target:
    """``ours`` (or ``ours / peer`` when ``peer`` is set) must be >= or <= ``value``."""

    text: str
    op: str                 # ">=" or "<="
    value: float
    peer: str | None = None

    def check(self, ours: Figure, peers: dict[str, Figure]) -> dict:
        actual = ours.median
        if self.peer is not None:
            peer = peers.get(self.peer)
            actual = ratio(ours, peer) if peer is not None else None
        met = None if actual is None else (actual >= self.value if self.op == ">=" else actual <= self.value)
        if ours.status.startswith("failed"):
            met = False  # the product could not do it at all (not a broken harness)
        return {"text": self.text, "op": self.op, "value": self.value, "peer": self.peer,
                "actual": actual, "met": met}


def ratio(ours: Figure, peer: Figure | None) -> float | None:
    if peer is None or ours.median is None or peer.median in (None, 0):
        return None
    return ours.median / peer.median


@dataclass
class Record:
    benchmark: str
    figure: str              # what "ours" is, e.g. "jobs/s, wall-clock of the whole command"
    params: dict
    ours: Figure
    peers: dict[str, Figure] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: str = ""
    label: str = ""          # the parameters that tell this row from its neighbours, for the table

    def as_dict(self, machine: dict, run: dict) -> dict:
        checks = [t.check(self.ours, self.peers) for t in self.targets]
        mets = [c["met"] for c in checks]
        return {
            "benchmark": self.benchmark, "figure": self.figure, "label": self.label, "params": self.params,
            "status": self.ours.status, "ours": self.ours.as_dict(),
            "peers": {name: fig.as_dict() for name, fig in self.peers.items()},
            "ratios": {name: ratio(self.ours, fig) for name, fig in self.peers.items()},
            "targets": checks,
            "met": None if not checks or None in mets else all(mets),
            "notes": self.notes, "machine": machine, "run": run,
        }


def stats(values: list[float]) -> dict:
    """p50/p99/max/mean of latencies (any unit), for a figure's ``extra``."""
    if not values:
        return {"n": 0}
    v = sorted(values)
    return {"n": len(v), "p50": percentile(v, 50), "p90": percentile(v, 90), "p99": percentile(v, 99),
            "max": v[-1], "mean": sum(v) / len(v)}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


# ---- the machine ----------------------------------------------------------------------------------
def machine_facts() -> dict:
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(), "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False), "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "platform": platform.platform(), "hpc_edge": _hpc_edge_version(), "git": _git_facts(),
    }


def _hpc_edge_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("hpc-edge")
    except Exception:  # noqa: BLE001 - a fact we report, not one we need
        return None


def _git_facts() -> dict:
    def git(*args):
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20)
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


# ---- commands -------------------------------------------------------------------------------------
@dataclass
class Timed:
    wall_s: float
    returncode: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0   # user + system CPU of the command and every descendant that was waited for
    busy_s: float = 0.0  # CPU the whole machine spent meanwhile (all cores, anything running)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_s() -> float:
    """CPU seconds every core of this machine has spent not idle since boot: user, nice, system, irq
    and softirq of /proc/stat (guest time is inside user; iowait and steal are not work done here)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def timed(argv: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 3600) -> Timed:
    """Run a command to its end; wall-clock measured around the whole process.

    Two CPU figures: this process's reaped children's CPU before and after (the command and every
    descendant whose parent waited for it: an MPI job's ranks, the payloads they reaped; nothing that
    was left to run detached, such as Parsl's worker pool), and the whole machine's busy CPU before and
    after (everything, detached processes included, and whatever else ran meanwhile: measure on an
    otherwise idle machine). Commands are run one at a time, so nothing else is reaped meanwhile.

    If the harness is interrupted or the command overruns, the command gets SIGTERM (``hpc-edge run``
    then stops its MPI job cleanly) and SIGKILL only if it is still there 60 s later, so no worker
    outlives the harness.
    """
    cpu_before, busy_before = children_cpu_s(), machine_busy_s()
    started = time.perf_counter()
    proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        stop(proc)
        raise
    wall = time.perf_counter() - started
    return Timed(wall, proc.returncode, stdout, stderr, children_cpu_s() - cpu_before, machine_busy_s() - busy_before)


def stop(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM, then SIGKILL after the grace: for a child this harness started."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def last_json_line(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise BenchError(f"no JSON line in output: {text[-500:]!r}")


def tail(text: str, n: int = 400) -> str:
    return " ".join(text.strip().split())[-n:]


# ---- the peers' venv ----------------------------------------------------------------------------
def ensure_peers_venv(log) -> str | None:
    """Create bench/.peers-venv with Parsl if needed; None when ready, else why it is not."""
    if _parsl_version() is not None:
        return None
    log("peers: creating bench/.peers-venv and installing parsl (once)")
    try:
        if not PEERS_PYTHON.exists():
            subprocess.run(["python3", "-m", "venv", str(PEERS_VENV)], check=True, capture_output=True,
                           text=True, timeout=300)
        proc = subprocess.run([str(PEERS_PYTHON), "-m", "pip", "install", "--quiet", "parsl"],
                              capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not create bench/.peers-venv: {exc}"
    if proc.returncode != 0:
        return f"pip install parsl failed: {tail(proc.stderr, 300)}"
    if _parsl_version() is None:
        return "parsl installed but does not import in bench/.peers-venv"
    return None


def _parsl_version() -> str | None:
    if not PEERS_PYTHON.exists():
        return None
    proc = subprocess.run([str(PEERS_PYTHON), "-c", "import parsl; print(parsl.__version__)"],
                          capture_output=True, text=True, timeout=120)
    return proc.stdout.strip() if proc.returncode == 0 else None


def peers_env() -> dict:
    """Parsl starts its interchange and worker pool by script name: the peers' venv must lead PATH."""
    return {"PATH": f"{PEERS_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(PEERS_VENV)}


# ---- what a benchmark is handed -------------------------------------------------------------------
@dataclass
class Context:
    quick: bool
    tmp: Path                       # a scratch directory for this run (removed at the end)
    log: object                     # log(message): progress lines on stderr
    peers_status: str | None = None  # None: Parsl is ready; else "skipped: why"
    options: dict = field(default_factory=dict)

    def repeats(self, full: int = 3, quick: int = 1) -> int:
        return int(self.options.get("repeats") or (quick if self.quick else full))

    def scratch(self, name: str) -> Path:
        """A directory for one run, kept until the end of the whole bench (removed with ``tmp``): on a
        disk mounted with online discard, deleting 10^5 files slows creating files for minutes, so
        removing one run's files before the next would charge its cleanup to the next run."""
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# ---- profiles (optional: --profile) ------------------------------------------------------------
PY_SPY = PEERS_VENV / "bin" / "py-spy"


def ensure_py_spy(log) -> str | None:
    """py-spy in bench/.peers-venv (never the product venv); None when ready, else why not."""
    if PY_SPY.exists():
        return None
    if not PEERS_PYTHON.exists():
        subprocess.run(["python3", "-m", "venv", str(PEERS_VENV)], capture_output=True, timeout=300)
    log("profile: installing py-spy into bench/.peers-venv")
    proc = subprocess.run([str(PEERS_PYTHON), "-m", "pip", "install", "--quiet", "py-spy"], capture_output=True,
                          text=True, timeout=600)
    return None if proc.returncode == 0 and PY_SPY.exists() else f"py-spy install failed: {tail(proc.stderr, 200)}"


def py_spy_attach(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """Sample a running process (all its threads) for ``seconds`` into a collapsed-stack file."""
    return subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                             "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def py_spy_wrap(argv: list, out: Path) -> list:
    """argv run under py-spy, with its subprocesses (the MPI ranks) sampled too."""
    return [str(PY_SPY), "record", "--subprocesses", "--rate", "200", "--format", "raw", "--output", str(out),
            "--nonblocking", "--", *map(str, argv)]
