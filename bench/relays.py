"""Benchmark 4, many relays (simulated): 10,000 relays (quick: 200) against one tower.

The tower is started as a user would (``hpc-edge tower start``) with a site that has no queues, so it
launches no real worker; a workload of ``/bin/true`` jobs is submitted for the simulated relays to
take. The tower runs alone on one core (every thread pinned to the last CPU), the generators on the
others. Load generator processes (bench/relay_sim.py, 2,500 relays each) open one CURVE DEALER per
relay, say Hello (in batches: the ramp), then for a fixed time: each relay requests work, reports
each job's start (Update running) and end (Update finished), keeps one job prefetched, sends a
Heartbeat every 30 s (phases spread out). Job lengths are exponential with a mean chosen so the
relays together finish ``JOB_RATE`` jobs/s, i.e. offer 2 x JOB_RATE updates/s.

Figures: updates acknowledged per second in the steady window (after the start-up spread), Update ->
Ack latency p50/p99 in that window, Heartbeat -> Ack latency p50/p99 in that window, updates and
heartbeats never acknowledged (the generator does not resend, so every missing Ack is a loss), the
tower's CPU% (psutil, user+system over the window) and RSS. The
generators' own CPU and scheduling lag are reported too: on 2 cores they share the machine with
the tower, and a lagging generator would understate the load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time

import psutil

from .harness import BENCH, BenchError, Context, Figure, Record, Target, py_spy_attach, stats
from .towerctl import BenchTower, write_true_workload

NAME = "relays"
PER_GENERATOR = 2500
JOB_RATE = 1200.0          # jobs/s offered by all relays together: 2,400 updates/s


def plan(ctx: Context) -> dict:
    if ctx.quick:
        return {"relays": 200, "duration_s": 12.0, "job_rate": JOB_RATE}
    return {"relays": 10_000, "duration_s": 60.0, "job_rate": JOB_RATE}


class Sampler(threading.Thread):
    """Samples the tower's RSS and its scheduler state (running, sleeping, disk wait) while the load runs."""

    def __init__(self, proc: psutil.Process):
        super().__init__(daemon=True)
        self.proc, self.rss, self.stopping = proc, [], threading.Event()
        self.states: dict[str, int] = {}

    def run(self):
        n = 0
        while not self.stopping.wait(0.05):
            try:
                state = self.proc.status()
                self.states[state] = self.states.get(state, 0) + 1
                n += 1
                if n % 10 == 0:
                    self.rss.append(self.proc.memory_info().rss / 2**20)
            except psutil.Error:
                return

    def state_shares(self) -> dict[str, float]:
        total = sum(self.states.values()) or 1
        return {k: round(v / total, 3) for k, v in sorted(self.states.items())}


def cpu_split() -> tuple[set[int], set[int]]:
    """(the tower's CPU, the generators' CPUs): the tower alone on one core, the generators on the
    others; both everything this process may use if that is a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus)
    return {cpus[-1]}, set(cpus[:-1])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass  # a thread that just ended


def start_generators(tower: BenchTower, relays: int, job_rate: float, logs,
                     cpus: set[int]) -> list[subprocess.Popen]:
    n_gen = max(1, math.ceil(relays / PER_GENERATOR))
    gens = []
    for g in range(n_gen):
        share = relays // n_gen + (1 if g < relays % n_gen else 0)
        argv = [sys.executable, str(BENCH / "relay_sim.py"), "--address", tower.address,
                "--keys", str(tower.home / "keys"), "--prefix", f"sim{g}", "--relays", str(share),
                "--job-rate", str(job_rate * share / relays), "--seed", str(100 + g),
                "--cpus", ",".join(map(str, sorted(cpus)))]
        gens.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logs, text=True))
    return gens


def read_tagged(proc: subprocess.Popen, tag: str, timeout_s: float) -> dict:
    """The JSON after ``tag`` on the generator's stdout (a reader thread keeps the timeout honest)."""
    box: dict = {}

    def reader():
        for line in proc.stdout:
            if line.startswith(tag + " "):
                box["value"] = json.loads(line[len(tag) + 1:])
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout_s)
    if "value" not in box:
        raise BenchError(f"relay generator pid {proc.pid} gave no {tag} within {timeout_s:.0f} s "
                         f"(exit {proc.poll()})")
    return box["value"]


def one_repeat(ctx: Context, cfg: dict, i: int) -> dict:
    relays, duration, job_rate = cfg["relays"], cfg["duration_s"], cfg["job_rate"]
    warmup = min(relays / job_rate, duration / 4)
    where = ctx.scratch(f"relays-{i}")
    tower = BenchTower(where / "home", lost_after_s=600)
    gens: list[subprocess.Popen] = []
    try:
        tower.start()
        tower_cpus, gen_cpus = cpu_split()
        pin(tower.proc.pid, tower_cpus)
        n_jobs = int(job_rate * (duration + 60)) + 3 * relays
        wall, err = tower.submit(write_true_workload(where / "workload.yaml", n_jobs, "bench-relays"))
        if err:
            raise BenchError(f"hpc-edge submit of {n_jobs} jobs failed: {err}")
        with open(where / "generators.log", "w") as logs:
            t0 = time.perf_counter()
            gens = start_generators(tower, relays, job_rate, logs, gen_cpus)
            ready = [read_tagged(g, "READY", 900) for g in gens]
            ramp_s = time.perf_counter() - t0
            welcomed = sum(r["welcomed"] for r in ready)
            ctx.log(f"  {welcomed} of {relays} relays welcomed in {ramp_s:.1f} s by {len(gens)} generator(s); "
                    f"tower RSS {tower.rss_mib():.0f} MiB")
            gen_procs = [psutil.Process(g.pid) for g in gens]
            sampler = Sampler(tower.proc)
            sampler.start()
            cpu0 = tower.proc.cpu_times()
            gen_cpu0 = [sum(gp.cpu_times()[:2]) for gp in gen_procs]
            w0 = time.perf_counter()
            for g in gens:
                g.stdin.write(f"GO {duration} {warmup} 20\n")
                g.stdin.flush()
            # the window in which CPU is measured: the steady phase after the start-up spread
            time.sleep(warmup)
            cpu_w0, w_w0 = tower.proc.cpu_times(), time.perf_counter()
            if ctx.options.get("profile_dir") and i == 0:
                # sampled from outside: py-spy costs the tower little, but it takes CPU on this machine
                out = ctx.options["profile_dir"] / f"relays-{relays}-tower.txt"
                py_spy_attach(tower.proc.pid, duration - warmup - 1, out)
                ctx.log(f"  profiling the tower for {duration - warmup - 1:.0f} s -> {out}")
            time.sleep(max(0.0, duration - warmup))
            cpu_w1, w_w1 = tower.proc.cpu_times(), time.perf_counter()
            gen_cpu1 = [sum(gp.cpu_times()[:2]) for gp in gen_procs]
            results = [read_tagged(g, "RESULT", 300) for g in gens]
            sampler.stopping.set()
            for g in gens:
                g.wait(60)
        tower_cpu = 100 * (sum(cpu_w1[:2]) - sum(cpu_w0[:2])) / (w_w1 - w_w0)
        tower_cpu_all = 100 * (sum(cpu_w1[:2]) - sum(cpu0[:2])) / (w_w1 - w0)
        gen_cpu = 100 * (sum(gen_cpu1) - sum(gen_cpu0)) / (w_w1 - w0)
        st = tower.status()
        tower.stop()
    finally:
        for g in gens:
            if g.poll() is None:
                g.kill()
        tower.kill()
    acks = [a for r in results for a in r["acks"]]
    window = [lat for sent, lat in acks if warmup <= sent < duration]            # latency: sent in the window
    hb_window = [lat for r in results for sent, lat in r["heartbeat_lat"] if warmup <= sent < duration]
    acked_in_window = sum(1 for sent, lat in acks if warmup <= sent + lat < duration)  # rate: acked in it
    out = {
        "relays": relays, "welcomed": welcomed, "tower_cpus": sorted(tower_cpus),
        "generator_cpus": sorted(gen_cpus), "ramp_s": ramp_s, "warmup_s": warmup, "window_s": duration - warmup,
        "updates_per_s": acked_in_window / (duration - warmup),
        "sent_updates": sum(r["sent_updates"] for r in results),
        "acked_updates": sum(r["acked_updates"] for r in results),
        "lost_updates": sum(r["lost_updates"] for r in results),
        "latency_ms": stats([1000 * x for x in window]),
        "latency_all_ms": stats([1000 * lat for _, lat in acks]),
        "heartbeats_sent": sum(r["heartbeats_sent"] for r in results),
        "heartbeat_acks": sum(r["heartbeat_acks"] for r in results),
        "lost_heartbeats": sum(r["lost_heartbeats"] for r in results),
        "heartbeat_latency_ms": stats([1000 * x for x in hb_window]),
        "requests": sum(r["requests"] for r in results), "no_works": sum(r["no_works"] for r in results),
        "jobs_finished": sum(r["jobs_finished"] for r in results),
        "rejects": {k: v for r in results for k, v in r["rejects"].items()},
        "tower_cpu_pct": tower_cpu, "tower_cpu_pct_incl_warmup": tower_cpu_all,
        "tower_rss_max_mib": max(sampler.rss) if sampler.rss else tower.rss_mib(),
        "tower_state_shares": sampler.state_shares(), "loadavg_after": os.getloadavg(),
        "generators": len(gens), "generators_cpu_pct": gen_cpu,
        "generator_lag_p99_s": max(r["lag_p99_s"] or 0 for r in results),
        "tower_rejected": st.get("rejected"), "tower_stats": st.get("stats"),
    }
    lat = out["latency_ms"]
    ctx.log(f"  {out['updates_per_s']:.0f} updates/s acked in the window; latency p50 "
            f"{lat.get('p50', float('nan')):.1f} ms p99 {lat.get('p99', float('nan')):.1f} ms; "
            f"lost {out['lost_updates']} of {out['sent_updates']}; heartbeats: p99 "
            f"{out['heartbeat_latency_ms'].get('p99', float('nan')):.1f} ms, lost {out['lost_heartbeats']} of "
            f"{out['heartbeats_sent']}; tower CPU {tower_cpu:.0f} %, RSS max "
            f"{out['tower_rss_max_mib']:.0f} MiB; generators CPU {gen_cpu:.0f} %, "
            f"lag p99 {out['generator_lag_p99_s']:.3f} s")
    return out


def heartbeat_figure(runs: list[dict]) -> Figure:
    """Heartbeat -> Ack p99 of each repeat with heartbeats in its window (p50 and counts in extra)."""
    lat = [r["heartbeat_latency_ms"] for r in runs]
    extra = {"p50": [x.get("p50") for x in lat], "in_window": [x["n"] for x in lat]}
    if not any(x["n"] for x in lat):
        return Figure("ms", [], extra, status="error: no heartbeat was sent in the steady window")
    return Figure("ms", [x["p99"] for x in lat if x["n"]], extra)


def run(ctx: Context) -> list[Record]:
    cfg = plan(ctx)
    repeats = ctx.repeats(full=3, quick=1)
    runs = []
    for i in range(repeats):
        ctx.log(f"relays: repeat {i + 1}/{repeats}: {cfg['relays']:,} relays, {cfg['job_rate']:.0f} jobs/s offered "
                f"for {cfg['duration_s']:.0f} s")
        runs.append(one_repeat(ctx, cfg, i))
    params = {**cfg, "offered_updates_per_s": 2 * cfg["job_rate"], "heartbeat_s": 30, "per_generator": PER_GENERATOR,
              "repeats": repeats, "tower": "hpc-edge tower start, site without queues, lost_after_s 600"}
    label = f"{cfg['relays']:,} relays"
    slim = [{k: v for k, v in r.items() if k not in ("latency_all_ms",)} for r in runs]
    return [
        Record(NAME, "relays connected and welcomed", params, Figure("relays", [r["welcomed"] for r in runs],
               {"ramp_s": [round(r["ramp_s"], 2) for r in runs]}),
               targets=[Target(f">= {cfg['relays']:,} relays", ">=", cfg["relays"])], label=label),
        Record(NAME, "job updates acked per second (steady window)", params,
               Figure("updates/s", [r["updates_per_s"] for r in runs], {"runs": slim}),
               targets=[Target(">= 2,000 updates/s", ">=", 2000.0)], label=label,
               notes="one job state change per Update; offered 2 per job"),
        Record(NAME, "Update -> Ack latency p99 (steady window)", params,
               Figure("ms", [r["latency_ms"]["p99"] for r in runs]), targets=[Target("<= 100 ms", "<=", 100.0)],
               label=label),
        Record(NAME, "Update -> Ack latency p50 (steady window)", params,
               Figure("ms", [r["latency_ms"]["p50"] for r in runs]), label=label, notes="informational"),
        Record(NAME, "Updates never acked (lost)", params, Figure("updates", [r["lost_updates"] for r in runs],
               {"sent": [r["sent_updates"] for r in runs]}),
               targets=[Target("0: every Update gets its Ack", "<=", 0)], label=label),
        Record(NAME, "Heartbeat -> Ack latency p99 (steady window)", params, heartbeat_figure(runs),
               label=label, notes="informational; heartbeats every 30 s per relay, phases spread out"),
        Record(NAME, "Heartbeats never acked (lost)", params,
               Figure("heartbeats", [r["lost_heartbeats"] for r in runs], {"sent": [r["heartbeats_sent"] for r in runs]}),
               targets=[Target("0: every Heartbeat gets its Ack", "<=", 0)], label=label),
        Record(NAME, "tower CPU (user+system, steady window)", params, Figure("%", [r["tower_cpu_pct"] for r in runs],
               {"tower_state_shares": [r["tower_state_shares"] for r in runs],
                "generators_cpu_pct": [round(r["generators_cpu_pct"], 1) for r in runs]}),
               label=label, notes="100 % = one core; state shares: how often the tower was seen running, "
                                  "sleeping or in disk wait; informational"),
        Record(NAME, "tower RSS (max while loaded)", params, Figure("MiB", [r["tower_rss_max_mib"] for r in runs]),
               label=label, notes="informational"),
    ]
