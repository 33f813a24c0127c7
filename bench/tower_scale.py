"""Benchmark 3, tower scale: a tower holding 1,000,000 queued jobs (quick: 50,000).

Through the user-visible path: ``hpc-edge tower start`` (a site with no queues, so no real worker
starts), ``hpc-edge submit`` of one task of N ``/bin/true`` jobs. Measured:
  submit    wall-clock of ``hpc-edge submit`` (and the time until /api/status counts all N jobs)
  RSS       of the tower process after the submit (psutil)
  dispatch  round trip of a work request while the N jobs are queued: a ZeroMQ DEALER playing a relay
            (CURVE keys from the data dir, identity = worker id) says Hello, then sends Requests one
            after the other and times each until its Work reply arrives (unpacked with msgpack, not
            validated: the client's own cost stays out of the figure); a 1-core series and a 128-core
            series (a big relay prefetching)
  status    wall-clock of ``hpc-edge status`` (the CLI, Python start-up included) and of a raw
            HTTP GET /api/status
"""

from __future__ import annotations

import time
import urllib.request

import msgpack
import zmq

from hpc_edge import protocol as p

from .harness import HPC_EDGE, BenchError, Context, Figure, Record, Target, percentile, py_spy_attach, stats, timed
from .towerctl import BenchTower, hello, relay_socket, write_true_workload

NAME = "tower_scale"
SERIES = ((1, 2000, 500), (128, 500, 200))   # (cores per request, requests full, requests quick)


def dispatch_series(tower: BenchTower, worker_id: str, cores: int, n_requests: int) -> tuple[list[float], int]:
    """Latencies (ms) of n_requests sequential Requests, and the jobs they got."""
    ctx = zmq.Context()
    sock = relay_socket(ctx, tower.address, tower.home / "keys", worker_id)
    latencies, jobs = [], 0
    try:
        sock.send(hello(worker_id, cores))
        reply = _recv(sock, 30.0)
        if reply.get("kind") != "welcome":
            raise BenchError(f"hello got {reply.get('kind')}: {reply.get('error', '')}")
        for req in range(1, n_requests + 1):
            data = p.encode(p.Request(req=req, cores=cores, max_job_cores=1, max_job_memory_mb=4096))
            t0 = time.perf_counter()
            sock.send(data)
            reply = _recv(sock, 30.0)
            latencies.append(1000 * (time.perf_counter() - t0))
            if reply.get("kind") == "work":
                if reply.get("req") != req:
                    raise BenchError(f"work for request {reply.get('req')} came as the answer to {req}")
                jobs += len(reply["jobs"])
            elif reply.get("kind") != "no_work":
                raise BenchError(f"request got {reply.get('kind')}: {reply.get('error', '')}")
        sock.send(p.encode(p.Bye(reason="benchmark done")))
        time.sleep(0.2)
    finally:
        sock.close(linger=500)
        ctx.term()
    return latencies, jobs


def _recv(sock: zmq.Socket, timeout_s: float) -> dict:
    """The reply as a plain map: a relay validates it, but the time measured is the tower's, not ours."""
    if not sock.poll(int(timeout_s * 1000)):
        raise BenchError(f"no reply from the tower within {timeout_s} s")
    return msgpack.unpackb(sock.recv(), raw=False)


def status_cli(tower: BenchTower, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        got = timed([HPC_EDGE, "status", "--data-dir", tower.home], timeout=120)
        if got.returncode != 0:
            raise BenchError(f"hpc-edge status exited {got.returncode}: {got.stderr[-300:]}")
        out.append(1000 * got.wall_s)
    return out


def status_http(tower: BenchTower, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        with urllib.request.urlopen(tower.api + "/api/status", timeout=60) as response:
            response.read()
        out.append(1000 * (time.perf_counter() - t0))
    return out


def one_repeat(ctx: Context, n: int, i: int) -> dict:
    where = ctx.scratch(f"tower-scale-{i}")
    tower = BenchTower(where / "home")
    got: dict = {}
    try:
        got["start_s"] = tower.start()
        got["rss_before_mib"] = tower.rss_mib()
        workload = write_true_workload(where / "workload.yaml", n, "bench-scale")
        t0 = time.perf_counter()
        got["submit_s"], got["submit_error"] = tower.submit(workload)
        got["ready_s"] = tower.wait_ready(n, t0, timeout=3600)
        if got["ready_s"] is None:
            raise BenchError(f"the tower did not hold {n} jobs within an hour")
        got["rss_after_mib"] = tower.rss_mib()
        ctx.log(f"  submit {got['submit_s']:.2f} s ({got['submit_error'] or 'ok'}), all {n} jobs counted after "
                f"{got['ready_s']:.2f} s; RSS {got['rss_before_mib']:.0f} -> {got['rss_after_mib']:.0f} MiB")
        quick = ctx.quick
        for cores, full_n, quick_n in SERIES:
            n_requests = quick_n if quick else full_n
            if ctx.options.get("profile_dir") and i == 0:
                out = ctx.options["profile_dir"] / f"tower-scale-dispatch-{cores}.txt"
                py_spy_attach(tower.proc.pid, 1 + n_requests * 0.01, out)
                ctx.log(f"  profiling the tower during the {cores}-core series -> {out}")
                time.sleep(0.5)
            lat, jobs = dispatch_series(tower, f"bench-dispatch-{cores}", cores, n_requests)
            got[f"dispatch_{cores}"] = {**stats(lat), "jobs": jobs, "requests": len(lat)}
            ctx.log(f"  dispatch of {cores}-core requests: p50 {percentile(sorted(lat), 50):.2f} ms, "
                    f"p99 {percentile(sorted(lat), 99):.2f} ms over {len(lat)} requests ({jobs} jobs handed out)")
        got["rss_end_mib"] = tower.rss_mib()
        cli = status_cli(tower, 5 if quick else 10)
        http = status_http(tower, 30 if quick else 100)
        got["status_cli"], got["status_http"] = stats(cli), stats(http)
        ctx.log(f"  status: CLI median {got['status_cli']['p50']:.0f} ms, HTTP p50 {got['status_http']['p50']:.1f} ms "
                f"p99 {got['status_http']['p99']:.1f} ms")
        tower.stop()
    finally:
        tower.kill()
    return got


def run(ctx: Context) -> list[Record]:
    n = 50_000 if ctx.quick else 1_000_000
    repeats = ctx.repeats(full=3, quick=1)
    runs = []
    for i in range(repeats):
        ctx.log(f"tower_scale: repeat {i + 1}/{repeats}: {n:,} jobs")
        runs.append(one_repeat(ctx, n, i))
    params = {"jobs": n, "payload": "/bin/true", "repeats": repeats,
              "path": "hpc-edge tower start (site without queues) + hpc-edge submit"}
    label = f"{n:,} jobs"
    submit_errors = [r["submit_error"] for r in runs if r["submit_error"]]
    submit = Figure("s", [r["submit_s"] for r in runs], {"errors": submit_errors} if submit_errors else {})
    if submit_errors:
        submit.status = f"failed: hpc-edge submit {submit_errors[0]}"
    records = [
        Record(NAME, "wall-clock of `hpc-edge submit`", params, submit,
               targets=[Target("<= 60 s", "<=", 60.0)], label=label),
        Record(NAME, "submit start until /api/status counts every job", params,
               Figure("s", [r["ready_s"] for r in runs]), label=label, notes="informational"),
        Record(NAME, "tower RSS after the submit", params, Figure("MiB", [r["rss_after_mib"] for r in runs],
               {"before_submit_mib": [round(r["rss_before_mib"], 1) for r in runs],
                "after_dispatch_series_mib": [round(r["rss_end_mib"], 1) for r in runs]}),
               targets=[Target("<= 1 GiB", "<=", 1024.0)], label=label),
    ]
    for cores, full_n, quick_n in SERIES:
        key = f"dispatch_{cores}"
        extra = {"runs": [r[key] for r in runs]}
        case = f"{label}, {cores}-core requests"
        records.append(Record(NAME, "dispatch round trip p99 (Request -> Work)", {**params, "request_cores": cores,
                              "requests": quick_n if ctx.quick else full_n},
                              Figure("ms", [r[key]["p99"] for r in runs], extra),
                              targets=[Target("<= 10 ms", "<=", 10.0)], label=case))
        records.append(Record(NAME, "dispatch round trip p50 (Request -> Work)", {**params, "request_cores": cores},
                              Figure("ms", [r[key]["p50"] for r in runs]), label=case, notes="informational"))
    records.append(Record(NAME, "`hpc-edge status` wall-clock (median of the calls)", params,
                          Figure("ms", [r["status_cli"]["p50"] for r in runs],
                                 {"runs": [r["status_cli"] for r in runs]}),
                          targets=[Target("<= 200 ms", "<=", 200.0)], label=label,
                          notes="a new Python process per call, as a user types it"))
    records.append(Record(NAME, "HTTP GET /api/status p99", params,
                          Figure("ms", [r["status_http"]["p99"] for r in runs],
                                 {"runs": [r["status_http"] for r in runs]}),
                          targets=[Target("<= 200 ms", "<=", 200.0)], label=label))
    return records
