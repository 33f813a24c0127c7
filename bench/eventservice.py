"""Benchmark 5, event ranges: one-event ranges of a do-nothing payload through the event service.

When ``examples/eventservice.yaml`` exists and the installed ``hpc-edge run`` accepts event-service
tasks (``event_service: true``), this runs 200,000 ranges (quick: 5,000) of bench/payloads/es_noop.py
in 4 jobs on 2 ranks and reports ranges/s. Otherwise it reports "not available: the event service is
not built yet". In full mode a 5,000-range pre-flight comes first; if 200,000 ranges would take more
than BUDGET_S per repeat at its rate, the run is sized down to fit and the record says so.

Either way it measures, in the same run, the floor any tower <-> relay exchange pays here: a ZeroMQ
DEALER/ROUTER ping-pong over tcp loopback with CURVE (one message each way, sequential); and how fast
one Python loop creates empty files on the scratch disk, which is what the payload does per range
(on this machine's ext4 that cost has varied from 8 to 130 µs of system time per file).
"""

from __future__ import annotations

import math
import shlex
import threading
import time

import zmq
import zmq.auth

from .harness import (
    HPC_EDGE,
    REPO,
    BenchError,
    Context,
    Figure,
    Record,
    Target,
    last_json_line,
    tail,
    timed,
    unavailable,
)

NAME = "eventservice"
EXAMPLE = REPO / "examples" / "eventservice.yaml"
NOT_BUILT = "not available: the event service is not built yet"
NOOP = REPO / "bench" / "payloads" / "es_noop.py"
JOBS = 4            # the ranges are split into this many jobs
BUDGET_S = 150.0    # full mode: at most about this long per repeat (see run())


def event_service_supported() -> str | None:
    """None if the example and the installed product support event-service tasks, else why not."""
    if not EXAMPLE.exists():
        return f"{NOT_BUILT} (no examples/eventservice.yaml)"
    try:
        from control_tower.workload import TaskSpec
    except ImportError as exc:
        return f"{NOT_BUILT} ({exc})"
    if "event_service" not in TaskSpec.model_fields:
        return f"{NOT_BUILT} (the installed TaskSpec has no event_service field)"
    return None


def workload_yaml(n_ranges: int, jobs: int) -> str:
    """One event-service task of n_ranges one-event ranges of the do-nothing payload, in ``jobs`` jobs."""
    return f"""name: bench-ranges
tasks:
  - name: noop
    event_service: true
    command: python {shlex.quote(str(NOOP))}
    events: {n_ranges}
    events_per_range: 1
    events_per_job: {math.ceil(n_ranges / jobs)}
    cores: 1
    max_attempts: 1
"""


def run_ranges(ctx: Context, n_ranges: int, jobs: int, tag: str) -> tuple[float, float]:
    """(ranges/s over the wall-clock of ``hpc-edge run``, ranges/s over its own elapsed_s)."""
    where = ctx.scratch(f"eventservice-{tag}")
    wl = where / "ranges.yaml"
    wl.write_text(workload_yaml(n_ranges, jobs))
    got = timed([HPC_EDGE, "run", wl, "--ranks", 2, "--json", "--data-dir", where / "data", "--fresh"],
                cwd=where, timeout=7200)
    if got.returncode != 0:
        raise BenchError(f"hpc-edge run exited {got.returncode}: {tail(got.stderr)}")
    summary = last_json_line(got.stdout)
    if not summary.get("ok"):
        raise BenchError(f"not every job finished: {summary.get('states')}")
    return n_ranges / got.wall_s, n_ranges / float(summary["elapsed_s"])


def zmq_pingpong(n: int) -> dict:
    """Round trips (µs) of a CURVE DEALER -> ROUTER -> DEALER ping-pong over tcp loopback."""
    ctx = zmq.Context()
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_publickey, router.curve_secretkey = server_pub, server_sec
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.curve_publickey, dealer.curve_secretkey, dealer.curve_serverkey = client_pub, client_sec, server_pub
    dealer.setsockopt(zmq.IDENTITY, b"ping")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def echo():
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(100):
                router.send_multipart(router.recv_multipart())

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    payload = b"x" * 200
    rtts = []
    try:
        for i in range(n + 200):
            t0 = time.perf_counter()
            dealer.send(payload)
            if not dealer.poll(10_000):
                raise BenchError("zmq ping-pong: no echo within 10 s")
            dealer.recv()
            if i >= 200:  # the first ones include the CURVE handshake
                rtts.append(1e6 * (time.perf_counter() - t0))
    finally:
        stop.set()
        t.join(2)
        dealer.close(0)
        router.close(0)
        ctx.term()
    rtts.sort()
    return {"n": n, "p50_us": rtts[len(rtts) // 2], "p99_us": rtts[int(0.99 * (len(rtts) - 1))],
            "round_trips_per_s": 1e6 / (sum(rtts) / len(rtts))}


def file_creation(ctx: Context, n: int, tag: str) -> float:
    """Empty files created per second by one Python loop in one new directory of the scratch disk:
    the do-nothing payload's own work per range, so the ceiling this disk puts on it today."""
    where = ctx.scratch(f"files-{tag}")
    t0 = time.perf_counter()
    for i in range(n):
        open(where / f"{i}.out", "wb").close()
    return n / (time.perf_counter() - t0)


def run(ctx: Context) -> list[Record]:
    asked = 5_000 if ctx.quick else 200_000
    repeats = ctx.repeats(full=3, quick=1)
    pings = [zmq_pingpong(2_000 if ctx.quick else 20_000) for _ in range(repeats)]
    peer = Figure("round trips/s", [x["round_trips_per_s"] for x in pings],
                  {"p50_us": [round(x["p50_us"], 1) for x in pings], "p99_us": [round(x["p99_us"], 1) for x in pings]})
    params = {"ranges": asked, "ranks": 2, "jobs": JOBS, "events_per_range": 1, "repeats": repeats,
              "payload": "bench/payloads/es_noop.py (an empty output file per range)"}
    files = Figure("files/s", [file_creation(ctx, 2_000 if ctx.quick else 20_000, str(i)) for i in range(repeats)])
    why = event_service_supported()
    wall, own = [], []
    if why is not None:
        ours, ours_own = unavailable(why, "ranges/s"), unavailable(why, "ranges/s")
    else:
        n = asked
        if not ctx.quick:
            # a pre-flight at the quick size; 200,000 ranges only if they fit the time budget
            rate, _ = run_ranges(ctx, 5_000, JOBS, "preflight")
            params["preflight_ranges_per_s"] = rate
            n = min(asked, max(5_000, int(rate * BUDGET_S)))
            if n < asked:
                params["ranges"] = n
                params["reduced"] = (f"asked for {asked:,} ranges; at the pre-flight's {rate:,.0f} ranges/s that "
                                     f"takes {asked / rate / 60:.0f} min per repeat, so {n:,} ranges "
                                     f"({BUDGET_S:.0f} s budget)")
                ctx.log(f"eventservice: {params['reduced']}")
        for i in range(repeats):
            ctx.log(f"eventservice: repeat {i + 1}/{repeats}: {n:,} ranges on 2 ranks")
            w, e = run_ranges(ctx, n, JOBS, str(i))
            wall.append(w)
            own.append(e)
            ctx.log(f"  {w:,.0f} ranges/s (wall-clock), {e:,.0f} ranges/s (own elapsed)")
        ours, ours_own = Figure("ranges/s", wall), Figure("ranges/s", own)
    label = f"{params['ranges']:,} ranges"
    return [
        Record(NAME, "event ranges/s over the wall-clock of `hpc-edge run`", params, ours,
               {"zmq_curve_pingpong": peer, "empty_file_create": files},
               [Target(">= 20,000 ranges/s", ">=", 20_000.0)], label=label,
               notes="peers: sequential CURVE DEALER/ROUTER round trips over tcp loopback; empty files created "
                     "per second by one Python loop on the scratch disk (the payload's work per range); same run"),
        Record(NAME, "event ranges/s over the run's own elapsed time", params, ours_own,
               {"zmq_curve_pingpong": peer}, label=label, notes="informational"),
    ]
