"""A load generator playing many relays against one tower (one process; the harness starts several).

Each simulated relay is a CURVE DEALER whose identity is its worker id, speaking hpc_edge.protocol
messages as msgpack maps shaped like the real relay's (``protocol.encode`` of the same records):
Hello; then Request for work, an Update(running) when a job "starts" and an Update(finished) when it
"finishes", a Heartbeat every 30 s (phases spread out), Bye at the end. Each relay keeps one job
running and one prefetched. Job lengths are exponential with mean relays/job_rate, so the process
finishes ``--job-rate`` jobs per second once every relay is busy (2 updates per job).

It never resends: every Update and every Heartbeat must get its Ack (a Heartbeat's has seq 0; the
tower answers each relay's messages in order), and those that do not are counted as lost.

Talks to the harness over stdin/stdout:  -> "READY {json}"  <- "GO duration_s warmup_s drain_s"
-> "RESULT {json}".
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import resource
import select
import sys
import time
from collections import deque
from pathlib import Path

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpc_edge import protocol as p  # noqa: E402
from hpc_edge.keys import client_curve  # noqa: E402

FINISH, HEARTBEAT, RETRY, START = 0, 1, 2, 3
HOST = "bench-sim"
JOB_ID, DISPATCH = p.JobSpec._fields.index("job_id"), p.JobSpec._fields.index("dispatch")  # in a job's array


def parse_args(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--keys", type=Path, required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--relays", type=int, required=True)
    ap.add_argument("--job-rate", type=float, required=True, help="jobs finished per second by this process")
    ap.add_argument("--heartbeat-s", type=float, default=30.0)
    ap.add_argument("--ramp-batch", type=int, default=250)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cpus", default="", help="comma-separated CPUs to run on (none: any)")
    return ap.parse_args(argv)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Templates:
    """Messages (maps) and job events (named tuples) built once from the protocol's own records, then
    copied with new values."""

    def __init__(self):
        self.request = p.Request(req=1, cores=1, max_job_cores=1, max_job_memory_mb=4096).model_dump()
        self.heartbeat = p.Heartbeat(running=1, last_seq=0).model_dump()
        self.update = p.Update(seq=1, events=[p.JobEvent(job_id=1, dispatch=1, state="running", t=0.0)]).model_dump()
        self.running = p.JobEvent(job_id=1, dispatch=1, state="running", t=0.0, rank=0, host=HOST, pid=1,
                                  start_time=0.0)
        self.finished = p.JobEvent(job_id=1, dispatch=1, state="finished", t=0.0, rank=0, host=HOST, pid=1,
                                   start_time=0.0, end_time=0.0, exit_code=0, cpu_s=0.001, wall_s=0.0,
                                   max_rss_kb=1024)
        self.bye = p.encode(p.Bye(reason="load generator done"))


class Sim:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.tpl = Templates()
        self.ctx = zmq.Context()
        self.ctx.set(zmq.MAX_SOCKETS, args.relays + 64)
        self.curve = client_curve(args.keys)
        n = args.relays
        self.ids = [f"{args.prefix}-{i:05d}" for i in range(n)]
        self.socks: list[zmq.Socket] = []
        self.by_fd: dict[int, int] = {}
        self.ep = select.epoll()
        self.welcomed = [False] * n
        self.held = [deque() for _ in range(n)]
        self.running: list[tuple | None] = [None] * n
        self.req_out = [False] * n
        self.seq = [0] * n
        self.unacked: list[dict] = [{} for _ in range(n)]
        self.dirty: set[int] = set()
        self.heap: list = []
        self.counter = 0
        self.go = 0.0
        self.accepting = True       # false after the steady phase: finishes stop, acks still counted
        self.mean_job_s = n / args.job_rate
        # results
        self.sent_updates = 0
        self.acks: list[tuple[float, float]] = []   # (send time since GO, latency s)
        self.hb_sent = self.hb_acked = 0
        self.hb_out = [deque() for _ in range(n)]    # each relay's heartbeats not yet acked: send times
        self.hb_lat: list[tuple[float, float]] = []  # (send time since GO, latency s)
        self.requests = self.works = self.no_works = self.jobs_got = 0
        self.jobs_started = self.jobs_finished = 0
        self.rejects: dict[str, int] = {}
        self.lag: list[float] = []

    # ---- sockets ------------------------------------------------------------------------------
    def open(self, i: int) -> None:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.IDENTITY, self.ids[i].encode())
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = self.curve
        s.connect(self.args.address)
        fd = s.getsockopt(zmq.FD)
        self.socks.append(s)
        self.by_fd[fd] = i
        self.ep.register(fd, select.EPOLLIN)

    def send(self, i: int, obj) -> None:
        self.socks[i].send(obj if isinstance(obj, bytes) else msgpack.packb(obj, use_bin_type=True))
        self.dirty.add(i)

    def pump(self, timeout_s: float) -> None:
        """Wait up to timeout for traffic, then read every socket that has some."""
        ready = {self.by_fd[fd] for fd, _ in self.ep.poll(max(0.0, timeout_s))}
        ready |= self.dirty
        self.dirty = set()
        for i in ready:
            self.drain(i)

    def drain(self, i: int) -> None:
        sock = self.socks[i]
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.handle(i, msgpack.unpackb(data, raw=False))

    def sweep(self) -> None:
        for i in range(len(self.socks)):
            self.drain(i)

    # ---- messages from the tower ---------------------------------------------------------------
    def handle(self, i: int, m: dict) -> None:
        kind = m.get("kind")
        now = time.monotonic()
        if kind == "ack":
            seq = m["seq"]
            if seq:
                sent = self.unacked[i].pop(seq, None)
                if sent is not None:
                    self.acks.append((sent - self.go, now - sent))
            else:  # a heartbeat's (the tower answers a relay's messages in order)
                self.hb_acked += 1
                if self.hb_out[i]:
                    sent = self.hb_out[i].popleft()
                    self.hb_lat.append((sent - self.go, now - sent))
        elif kind == "work":
            self.works += 1
            self.req_out[i] = False
            self.jobs_got += len(m["jobs"])
            self.held[i].extend((j[JOB_ID], j[DISPATCH]) for j in m["jobs"])  # jobs are arrays
            if self.running[i] is None and self.accepting:
                self.start_next(i, now)
        elif kind == "no_work":
            self.no_works += 1
            self.req_out[i] = False
            self.schedule(now + m.get("retry_s", 1.0), RETRY, i)
        elif kind == "welcome":
            self.welcomed[i] = True
        elif kind == "reject":
            err = str(m.get("error"))[:120]
            self.rejects[err] = self.rejects.get(err, 0) + 1

    # ---- a relay's life ------------------------------------------------------------------------
    def schedule(self, t: float, kind: int, i: int) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (t, self.counter, kind, i))

    def request(self, i: int, cores: int = 1) -> None:
        if self.req_out[i]:
            return
        self.seq_request = getattr(self, "seq_request", 0) + 1
        msg = dict(self.tpl.request, req=self.seq_request, cores=cores)
        self.req_out[i] = True
        self.requests += 1
        self.send(i, msg)

    def update(self, i: int, event: p.JobEvent) -> None:
        self.seq[i] += 1
        seq = self.seq[i]
        self.send(i, dict(self.tpl.update, seq=seq, events=[event]))
        self.unacked[i][seq] = time.monotonic()
        self.sent_updates += 1

    def start_next(self, i: int, now: float) -> None:
        if not self.held[i]:
            self.request(i)
            return
        job_id, dispatch = self.held[i].popleft()
        t = time.time()
        self.running[i] = (job_id, dispatch, t)
        self.jobs_started += 1
        self.update(i, self.tpl.running._replace(job_id=job_id, dispatch=dispatch, t=t, start_time=t, pid=job_id))
        self.schedule(now + self.rng.expovariate(1.0 / self.mean_job_s), FINISH, i)
        if not self.held[i]:
            self.request(i)

    def finish(self, i: int, now: float) -> None:
        job_id, dispatch, started = self.running[i]
        t = time.time()
        self.update(i, self.tpl.finished._replace(job_id=job_id, dispatch=dispatch, t=t, start_time=started,
                            end_time=t, wall_s=round(t - started, 6), pid=job_id))
        self.running[i] = None
        self.jobs_finished += 1
        self.start_next(i, now)

    def due(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            t, _, kind, i = heapq.heappop(self.heap)
            if not self.accepting and kind != HEARTBEAT:
                continue
            self.lag.append(now - t)
            if kind == FINISH:
                self.finish(i, now)
            elif kind == HEARTBEAT:
                self.hb_sent += 1
                self.send(i, dict(self.tpl.heartbeat, running=int(self.running[i] is not None),
                                  last_seq=self.seq[i]))
                self.hb_out[i].append(time.monotonic())
                self.schedule(t + self.args.heartbeat_s, HEARTBEAT, i)
            elif kind == RETRY:
                self.request(i)
            elif kind == START:
                self.request(i, cores=2)   # one job to run, one prefetched

    # ---- phases ---------------------------------------------------------------------------------
    def ramp(self, timeout_s: float = 600.0) -> dict:
        t0 = time.monotonic()
        n = self.args.relays
        batch = self.args.ramp_batch
        deadline = t0 + timeout_s
        for start in range(0, n, batch):
            for i in range(start, min(n, start + batch)):
                self.open(i)
                self.send(i, p.encode(p.Hello(worker_id=self.ids[i], ranks=[
                    p.RankInfo(rank=0, host=HOST, cores=1, memory_mb=4096)])))
            last_sweep = time.monotonic()
            while not all(self.welcomed[start:start + batch]) and time.monotonic() < deadline:
                self.pump(0.05)
                if time.monotonic() - last_sweep > 1.0:
                    self.sweep()
                    last_sweep = time.monotonic()
        return {"ramp_s": time.monotonic() - t0, "welcomed": sum(self.welcomed), "relays": n,
                "rejects": dict(self.rejects)}

    def steady(self, duration_s: float, warmup_s: float, drain_s: float) -> dict:
        cpu0 = time.process_time()
        self.go = time.monotonic()
        end = self.go + duration_s
        for i in range(len(self.socks)):
            self.schedule(self.go + self.rng.uniform(0, warmup_s), START, i)
            self.schedule(self.go + self.rng.uniform(0, self.args.heartbeat_s), HEARTBEAT, i)
        last_sweep = self.go
        while True:
            now = time.monotonic()
            if now >= end:
                break
            self.due(now)
            nxt = self.heap[0][0] if self.heap else end
            self.pump(min(max(0.0, nxt - time.monotonic()), 0.02))
            if now - last_sweep > 1.0:
                self.sweep()
                last_sweep = now
        self.accepting = False
        steady_end = time.monotonic() - self.go
        drain_deadline = time.monotonic() + drain_s
        while (any(self.unacked) or any(self.hb_out)) and time.monotonic() < drain_deadline:
            self.pump(0.02)
            if time.monotonic() - last_sweep > 0.5:
                self.sweep()
                last_sweep = time.monotonic()
        drained = time.monotonic() - self.go - steady_end
        lost = sum(len(u) for u in self.unacked)
        lost_heartbeats = sum(len(q) for q in self.hb_out)
        for i in range(len(self.socks)):
            self.send(i, self.tpl.bye)
        self.pump(0.5)
        cpu = time.process_time() - cpu0
        lag = sorted(self.lag)
        return {
            "steady_s": steady_end, "drain_s": drained, "sent_updates": self.sent_updates,
            "acked_updates": len(self.acks), "lost_updates": lost,
            "acks": [(round(a, 5), round(b, 6)) for a, b in self.acks],
            "heartbeats_sent": self.hb_sent, "heartbeat_acks": self.hb_acked, "lost_heartbeats": lost_heartbeats,
            "heartbeat_lat": [(round(a, 5), round(b, 6)) for a, b in self.hb_lat], "requests": self.requests,
            "works": self.works, "no_works": self.no_works, "jobs_got": self.jobs_got,
            "jobs_started": self.jobs_started, "jobs_finished": self.jobs_finished, "rejects": self.rejects,
            "cpu_s": cpu, "lag_p99_s": lag[int(0.99 * (len(lag) - 1))] if lag else None,
            "lag_max_s": lag[-1] if lag else None, "mean_job_s": self.mean_job_s,
        }

    def close(self) -> None:
        for s in self.socks:
            s.close(linger=500)
        self.ctx.term()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.cpus:  # before ZeroMQ starts its threads: they inherit it
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    raise_fd_limit()
    sim = Sim(args)
    ready = sim.ramp()
    print("READY " + json.dumps(ready), flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "GO":
        sim.close()
        return 1
    result = sim.steady(float(line[1]), float(line[2]), float(line[3]))
    print("RESULT " + json.dumps(result), flush=True)
    sim.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
