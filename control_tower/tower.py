"""The control tower: one asyncio service owning the store, the dispatcher and the relays' socket.

Each turn of the loop reads every message that has arrived, handles it (changes go to memory and to
the open store transaction), commits once, and only then sends the replies: nothing is acknowledged
before it is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio
from pydantic import BaseModel, ConfigDict, Field

from hpc_edge import protocol as p
from hpc_edge.errors import ErrorCode, ProtocolError

from .dispatcher import Dispatcher
from .jobs import JobBook
from .merge import MergeError, merge_job
from .messenger import FileMessenger
from .ranges import RangeBook
from .store import Store

logger = logging.getLogger(__name__)
EARLY_ANSWER_S = 0.005


MERGE_TRIES = 2  # a merge process that dies (killed, out of memory) is started once more
MERGE_COMMAND = (sys.executable, "-m", "control_tower.merge")
ADDRESS_KEY = "relay_address"  # meta: where the last tower on a port of its choosing listened


class MergeProcessDied(Exception):
    """A merge process ended without an answer."""


class TowerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bind: str = Field(default="tcp://127.0.0.1:0", description="where relays connect (ZeroMQ)")
    advertise: str | None = Field(default=None, description="address given to workers, if not the bound one")
    heartbeat_s: float = Field(default=10.0, gt=0)
    lost_after_s: float = Field(default=120.0, gt=0)
    walltime_margin_s: float = Field(default=60.0, ge=0)
    idle_drain_s: float = Field(default=60.0, ge=0, description="a worker idle this long is drained")
    exit_when_done: bool = False
    curve: bool = True
    merge_process_from: int = Field(default=5000, ge=0, description=(
        "an event-service job of at least this many ranges is merged in a process of its own (the tower's "
        "loop keeps its interpreter to itself); smaller ones in a thread"))


@dataclass
class LiveWorker:
    worker_id: str
    identity: bytes | None = None
    ranks: list = field(default_factory=list)
    last_seen: float = 0.0
    last_seq: int = 0                                 # every update up to this one is applied
    applied_above: set = field(default_factory=set)   # and these, beyond it
    idle_since: float | None = None
    commands: list = field(default_factory=list)
    said_bye: bool = False


class Tower:
    def __init__(self, store: Store, config: TowerConfig, data_dir: Path, ctx: zmq.asyncio.Context | None = None):
        self.store, self.cfg, self.data_dir = store, config, Path(data_dir)
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.dispatcher = Dispatcher(config.walltime_margin_s)
        self.book = JobBook(store, self.dispatcher, data_dir / "jobs")
        self.ranges = RangeBook(self.book, data_dir / "outputs")
        self.merges: dict[int, asyncio.Future] = {}
        self._merge_procs: dict[int, asyncio.subprocess.Process] = {}  # merges running in a process
        self._merge_deaths: Counter = Counter()
        self.messenger = FileMessenger(self.data_dir / "messenger")
        self.workers: dict[str, LiveWorker] = {}
        self.rejected: Counter = Counter()
        self.sock = None
        self.address = ""
        self.stopping = False
        self.on_worker_gone = []  # callbacks(worker_id) after a worker said bye or was lost
        self._auth = None
        self._outbox: list[tuple[bytes, bytes]] = []
        self._raw = None                              # the ROUTER without asyncio's futures, for NOBLOCK calls
        self._seqs: dict[str, LiveWorker] = {}        # workers whose applied updates are not yet in the store
        self._next_expiry = 0.0
        self._flushed_at = 0.0
        store.before_commit.append(self.write_seqs)  # whoever commits, the applied updates go with it
        self.started = time.time()
        self.stats = Counter()

    # ---- lifecycle ----------------------------------------------------------------------------
    def load(self) -> None:
        self.book.load()
        for task_id, (_, spec) in self.book.tasks.items():
            if spec.event_service:
                self.ranges.add_task(task_id, spec)
        for row in self.store.workers(live_only=True):
            live = LiveWorker(row["worker_id"], last_seen=time.monotonic(), last_seq=row["last_seq"],
                              applied_above=set(json.loads(row["applied_above"] or "[]")))
            live.ranks = json.loads(row["info"] or "{}").get("ranks", [])
            self.workers[row["worker_id"]] = live

    async def start(self) -> None:
        self.store.start_checkpointer()  # WAL checkpoints off the loop: no commit stalls on one
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self.cfg.curve:
            self._start_auth()
        bind = self.cfg.bind
        if bind.endswith(":0"):
            self.address = self._bind_any_port(bind[:-2])
        else:
            self.sock.bind(bind)
            self.address = bind
        logger.info("tower listening for relays on %s (CURVE %s)", self.address, "on" if self.cfg.curve else "off")
        self._monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self.monitor = zmq.Socket.shadow(self._monitor.underlying)  # read without awaiting
        # non-blocking reads and writes go through a plain shadow of the socket: the asyncio socket
        # wraps each call in futures and callbacks, a cost per message; waiting stays with asyncio
        self._raw = zmq.Socket.shadow(self.sock.underlying)

    def _bind_any_port(self, host: str) -> str:
        """A port of the system's choosing, but the one this store's tower had before when it is free:
        relays still out from before (an ``hpc-edge run`` killed outright, then resumed) reconnect to
        it by themselves, report what their payloads did meanwhile and carry on, instead of waiting
        lost_after_s for a tower they cannot find while their jobs wait to run again elsewhere."""
        before = self.store.get_meta(ADDRESS_KEY)
        if before and before.rsplit(":", 1)[0] == host:
            try:
                self.sock.bind(before)
                return before
            except zmq.ZMQError as exc:
                if self.workers:
                    logger.warning("%s, where this store's earlier tower listened, is taken (%s): its relays "
                                   "cannot reconnect; after lost_after_s their jobs return to the pool",
                                   before, exc)
        address = f"{host}:{self.sock.bind_to_random_port(host)}"
        self.store.set_meta(ADDRESS_KEY, address)
        self.store.commit()
        return address

    def _start_auth(self) -> None:
        from zmq.auth.asyncio import AsyncioAuthenticator

        from hpc_edge.keys import SERVER, load_keypair

        keys = self.data_dir / "keys"
        self._auth = AsyncioAuthenticator(self.ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(keys / "clients"))
        public, secret = load_keypair(keys, SERVER)
        self.sock.curve_server = True
        self.sock.curve_publickey, self.sock.curve_secretkey = public, secret

    @property
    def worker_address(self) -> str:
        return self.cfg.advertise or self.address

    def close(self) -> None:
        for proc in self._merge_procs.values():  # a merge not recorded is done again after a restart
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        self.store.stop_checkpointer()
        if self.sock is not None:
            self.sock.disable_monitor()
            self._monitor.close()
            self.sock.close()
        if self._auth is not None:
            self._auth.stop()

    async def turn(self, timeout_ms: int = 200) -> None:
        """One turn: read everything waiting, handle it, commit, reply.

        A request is answered within the turn (commit, then send) rather than after it, at most once
        every ``EARLY_ANSWER_S``: a relay whose ranks are running out waits for that answer, and a
        turn that also applies thousands of range events from updates takes tens of milliseconds."""
        for worker_id, data in self.messenger.poll():
            self.handle_message(worker_id.encode(), data)
        if await self.sock.poll(timeout_ms, zmq.POLLIN):
            for identity, data in self.waiting():
                if self.handle_message(identity, data) == "request" and \
                        time.monotonic() - self._flushed_at >= EARLY_ANSWER_S:
                    self.flush()
        self.count_refused_connections()
        now = time.monotonic()
        if now >= self._next_expiry:  # a scan of every worker: not on each turn of a busy loop
            self._next_expiry = now + min(1.0, self.cfg.lost_after_s / 10)
            self.expire_lost_workers()
        self.book.release_backoffs()
        self.collect_merges()
        self.flush()
        self.start_merges()

    def read_last_words(self, worker_id: str) -> None:
        """Handle at once what has come in and is not read yet, this worker's messages among them: asked
        before a worker whose batch job has ended is taken for gone, so that one that said bye and exited
        right after is not taken for one that died (its bye may still sit in the socket or its mailbox)."""
        for data in self.messenger.take(worker_id):
            self.handle_message(worker_id.encode(), data)
        if self._raw is not None:
            for identity, data in self.waiting():
                self.handle_message(identity, data)

    def waiting(self, at_most: int = 5000):
        """(identity, message) of what waits in the socket, read without waiting; at most ``at_most``
        frames, so a flood cannot hold the loop. Anything not framed as identity and message is counted."""
        for _ in range(at_most):
            try:
                frames = self._raw.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) != 2:
                self.rejected["framing"] += 1
                continue
            yield frames

    def count_refused_connections(self) -> None:
        """Clients that failed the CURVE handshake (no known key, or no CURVE at all): logged and counted."""
        from zmq.utils.monitor import parse_monitor_message

        while True:
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(frames)
            self.rejected["refused_connections"] += 1
            logger.warning("refused a connection from %s: handshake failed (%s)",
                           event["endpoint"].decode(errors="replace"),
                           "unknown key" if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH else f"code {event['value']}")

    def flush(self) -> None:
        """Commit, then send what waits for the commit."""
        self._flushed_at = time.monotonic()
        self.ranges.flush()
        self.store.commit()  # writes the workers' applied updates first (write_seqs)
        outbox, self._outbox = self._outbox, []
        for identity, data in outbox:
            worker_id = identity.decode(errors="replace")
            try:
                if self.messenger.knows(worker_id):
                    self.messenger.send(worker_id, data)
                else:
                    (self._raw or self.sock).send_multipart([identity, data], zmq.NOBLOCK)
            except (zmq.ZMQError, OSError) as exc:
                logger.warning("reply to %r not sent: %s", identity[:64], exc)

    def reply(self, identity: bytes, message) -> None:
        self._outbox.append((identity, p.encode(message)))

    # ---- messages ------------------------------------------------------------------------------
    def handle_message(self, identity: bytes, data: bytes) -> str | None:
        """Decode, check and handle one message; its kind if it was handled."""
        self.stats["messages"] += 1
        try:
            message = p.decode(data)
        except ProtocolError as exc:
            self.reject(identity, str(exc))
            return None
        handler = getattr(self, f"handle_{message.kind}", None)
        if handler is None:
            self.reject(identity, f"a relay may not send {message.kind!r} messages")
            return None
        worker_id = identity.decode(errors="replace")
        if message.kind != "hello" and worker_id not in self.workers:
            self.reject(identity, f"unknown worker {worker_id!r}: say hello first")
            return None
        handler(identity, message)
        return message.kind

    def reject(self, identity: bytes, error: str) -> None:
        self.rejected["messages"] += 1
        logger.warning("rejected a message from %r: %s", identity[:64], error)
        self.reply(identity, p.Reject(error=error[:1000]))

    def handle_hello(self, identity: bytes, m: p.Hello) -> None:
        if identity.decode(errors="replace") != m.worker_id:
            self.reject(identity, "hello: worker_id does not match the connection's identity")
            return
        live = self.workers.get(m.worker_id)
        if live is None:
            live = self.workers[m.worker_id] = LiveWorker(m.worker_id)
            if not self.store.workers_has(m.worker_id):
                self.store.add_worker(m.worker_id, "external", None, len({r.host for r in m.ranks}),
                                      len(m.ranks), sum(r.cores for r in m.ranks), None)
        live.identity, live.ranks, live.last_seen = identity, m.ranks, time.monotonic()
        live.said_bye = False
        fields = {"batch_id": m.batch_id} if m.batch_id else {}
        self.store.update_worker(m.worker_id, state="running", started=time.time(), ends_at=m.ends_at,
                                 last_seen=time.time(), info={"ranks": [r.model_dump() for r in m.ranks]}, **fields)
        release = self.book.reconcile(m.worker_id, set(m.holding))
        self.ranges.reconcile(m.worker_id, set(m.holding_ranges))
        self.reply(identity, p.Welcome(worker_id=m.worker_id, heartbeat_s=self.cfg.heartbeat_s,
                                       lost_after_s=self.cfg.lost_after_s, last_seq=live.last_seq, release=release))

    def handle_request(self, identity: bytes, m: p.Request) -> None:
        live = self.seen(identity)
        worker_id = live.worker_id
        self.stats["requests"] += 1
        specs, ranges, es_specs = [], [], []
        if not self.stopping:
            if m.cores:
                specs = self.book.dispatch(worker_id, m.cores, m.max_job_cores, m.max_job_memory_mb, m.remaining_s,
                                           m.holes)
            if m.ranges:
                ranges, es_specs = self.ranges.take(worker_id, m.ranges)
        exhausted = self.ranges.exhausted(worker_id)
        ranges_ready = self.ranges.ready_count
        if specs or ranges:
            live.idle_since = None
            # from the tower's own checked records: not validated again, range by range
            self.reply(identity, p.Work.model_construct(
                req=m.req, jobs=specs, ranges=ranges, es_jobs=es_specs, exhausted=exhausted,
                ranges_ready=bool(ranges_ready), jobs_ready=bool(len(self.dispatcher))))
            return
        self.stats["no_work"] += 1
        now = time.monotonic()
        if live.idle_since is None:
            live.idle_since = now
        holding = bool(self.book.held_by(worker_id)) or bool(self.ranges.held_by(worker_id))
        nothing_ready = not len(self.dispatcher) and not ranges_ready and not self.book.backoff
        nothing_fits = not ranges_ready and not self.dispatcher.fits_any(
            m.max_job_cores, m.max_job_memory_mb, m.remaining_s)
        drain = self.stopping or (not holding and (nothing_ready or nothing_fits) and (
            self.cfg.exit_when_done or now - live.idle_since >= self.cfg.idle_drain_s))
        self.reply(identity, p.NoWork(req=m.req, retry_s=0.2 if holding else 1.0, drain=drain, exhausted=exhausted,
                                      ranges_ready=bool(ranges_ready), jobs_ready=bool(len(self.dispatcher))))

    def handle_update(self, identity: bytes, m: p.Update) -> None:
        live = self.seen(identity)
        self.stats["updates"] += 1
        if m.seq <= live.last_seq or m.seq in live.applied_above:
            self.stats["duplicate_updates"] += 1
        else:
            self.book.apply_all(live.worker_id, m.events)
            for event in m.ranges:
                self.ranges.apply(live.worker_id, event)
            # updates may arrive out of order after a reconnect (one lost with the old connection,
            # later ones queued meanwhile): remember exactly which are applied, not just the highest
            live.applied_above.add(m.seq)
            while live.last_seq + 1 in live.applied_above:
                live.last_seq += 1
                live.applied_above.discard(live.last_seq)
            self._seqs[live.worker_id] = live  # written once per turn, before the commit (write_seqs)
        self.reply(identity, p.Ack(seq=m.seq, commands=self.take_commands(live)))

    def write_seqs(self) -> None:
        """Put the workers' applied updates (last_seq, applied_above) into the open transaction: once per
        worker and turn, however many of its updates the turn applied."""
        if self._seqs:
            now = time.time()
            self.store.set_worker_seqs([(live.last_seq, now, json.dumps(sorted(live.applied_above)), worker_id)
                                        for worker_id, live in self._seqs.items()])
            self._seqs.clear()

    def handle_heartbeat(self, identity: bytes, m: p.Heartbeat) -> None:
        live = self.seen(identity)
        self.reply(identity, p.Ack(seq=0, commands=self.take_commands(live)))

    def handle_bye(self, identity: bytes, m: p.Bye) -> None:
        live = self.seen(identity)
        live.said_bye = True
        self.worker_ended(live.worker_id, "done", f"said bye: {m.reason}")

    def seen(self, identity: bytes) -> LiveWorker:
        live = self.workers[identity.decode()]
        live.identity = identity
        live.last_seen = time.monotonic()
        return live

    def take_commands(self, live: LiveWorker) -> list:
        if not live.commands:
            # keep the worker's own (empty) list: a new one per message outlives the collector's young
            # generations, and thousands of relays' worth of them set off a full collection every few seconds
            return []
        commands, live.commands = live.commands, []
        return commands

    # ---- workers ------------------------------------------------------------------------------
    def command(self, worker_id: str, command: p.Command) -> None:
        """Send a command to a worker now (pushed on its connection), or on its next message."""
        live = self.workers.get(worker_id)
        if live is None:
            return
        if live.identity is not None:
            self.reply(live.identity, p.Ack(seq=0, commands=[command]))
        else:
            live.commands.append(command)

    def stop_workers(self, reason: str) -> None:
        for worker_id in list(self.workers):
            self.command(worker_id, p.Command(action="stop", reason=reason))

    def worker_ended(self, worker_id: str, state: str, why: str) -> None:
        """A worker is gone: its jobs go back to the pool (not the payloads' fault)."""
        self.workers.pop(worker_id, None)
        code = ErrorCode.WORKER_STOPPED if state == "done" else ErrorCode.LOST_WORKER
        n = self.book.release_worker(worker_id, code, f"worker {worker_id} {state}: {why}")
        n += self.ranges.release_worker(worker_id, code, f"worker {worker_id} {state}: {why}")
        self.store.update_worker(worker_id, state=state, ended=time.time())
        if self.messenger.knows(worker_id):
            self.messenger.forget(worker_id)
        logger.info("worker %s %s (%s); %d jobs and ranges returned to the pool", worker_id, state, why, n)
        for callback in self.on_worker_gone:
            callback(worker_id)

    def expire_lost_workers(self) -> None:
        now = time.monotonic()
        for live in list(self.workers.values()):
            if now - live.last_seen > self.cfg.lost_after_s:
                self.worker_ended(live.worker_id, "lost", f"no message for {self.cfg.lost_after_s:.0f} s")

    # ---- event-service merges -----------------------------------------------------------------
    def collect_merges(self) -> None:
        """Finish the jobs whose merge is done (their states go into this turn's commit)."""
        for job_id, future in list(self.merges.items()):
            if future.done():
                del self.merges[job_id]
                self.merged(job_id, future)

    def start_merges(self, max_parallel: int = 2) -> None:
        """Start merges of jobs whose ranges are all final and committed (call after a commit).

        A merge reads the job's finished ranges itself, on a connection of its own: with tens of
        thousands of ranges, reading them here would hold up every worker's request. A big job's
        merge (``merge_process_from`` ranges or more) runs in a process: in a thread its archive
        or HDF5 copy would hold this interpreter for seconds, in slices, and the loop answering the
        relays would wait for it."""
        while self.ranges.to_merge and len(self.merges) < max_parallel:
            job_id = self.ranges.to_merge.pop(0)
            es = self.ranges.es[job_id]
            name = self.book.tasks[es.task_id][0]
            args = (self.store.path, job_id, es.id_prefix, self.ranges.output_dir(name, job_id), f"{name}.{job_id}")
            if es.total >= self.cfg.merge_process_from:
                self.merges[job_id] = asyncio.ensure_future(self._merge_in_process(*args))
            else:
                self.merges[job_id] = asyncio.get_running_loop().run_in_executor(None, merge_job, *args)

    async def _merge_in_process(self, store_path: Path, job_id: int, prefix: str, out_dir: Path,
                                stem: str) -> Path | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *MERGE_COMMAND, str(store_path), str(job_id), prefix, str(out_dir), stem,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:  # out of processes or memory for a moment: as a merge process that died
            raise MergeProcessDied(f"the merge process of job {job_id} could not start: {exc}") from exc
        self._merge_procs[job_id] = proc
        try:
            out, err = await proc.communicate()
        finally:
            self._merge_procs.pop(job_id, None)
        answer = None
        if proc.returncode == 0:
            try:
                answer = json.loads(out.decode().strip().splitlines()[-1])
            except (ValueError, IndexError, UnicodeDecodeError):
                pass
        if isinstance(answer, dict) and isinstance(answer.get("error"), str):
            raise MergeError(answer["error"])
        if isinstance(answer, dict) and "path" in answer and isinstance(answer["path"], (str, type(None))):
            return None if answer["path"] is None else Path(answer["path"])
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        raise MergeProcessDied(f"the merge process of job {job_id} ended with {why} and no answer: "
                               f"{err.decode(errors='replace').strip()[-500:] or 'nothing on stderr'}")

    def merged(self, job_id: int, future) -> None:
        es = self.ranges.es[job_id]
        fields: dict = {}
        try:
            path = future.result()
            if path is not None:
                fields["files"] = [{"name": str(path), "size": path.stat().st_size}]
        except (MergeError, MergeProcessDied, OSError) as exc:
            if isinstance(exc, MergeProcessDied):
                self._merge_deaths[job_id] += 1
                if self._merge_deaths[job_id] < MERGE_TRIES:
                    logger.warning("job %d: %s; merging again", job_id, exc)
                    self.ranges.to_merge.append(job_id)
                    return
            fields.update(error_code=int(ErrorCode.MERGE_FAILED), error_diag=f"merge failed: {exc}"[:4000])
            logger.error("job %d: merge failed: %s", job_id, exc)
        failed = es.counts["failed"]
        if failed and "error_code" not in fields:
            fields.update(error_code=int(ErrorCode.RANGES_FAILED),
                          error_diag=f"{failed} of {es.total} ranges failed for good")
        self.ranges.set_job(es, "failed" if "error_code" in fields else "finished", time.time(), fields)

    # ---- user actions -------------------------------------------------------------------------
    def kill_jobs(self, job_ids: list[int], reason: str = "killed by user") -> dict[str, int]:
        result = self.book.kill(job_ids, reason)
        for worker_id, ids in result.pop("by_worker").items():
            self.command(worker_id, p.Command(action="kill", job_ids=ids, reason=reason))
        return result

    def retry_jobs(self, job_ids: list[int]) -> dict:
        return self.book.retry(job_ids)

    def done(self) -> bool:
        """Whether every job has reached a final state."""
        return self.book.all_final()

    def status(self) -> dict:
        return {
            "address": self.worker_address, "uptime_s": round(time.time() - self.started, 1),
            "ready": len(self.dispatcher), "tasks": self.book.task_summaries(),
            "totals": dict(self.book.totals()), "workers": len(self.workers),
            "ranges": dict(self.ranges.range_totals()),
            "rejected": dict(self.rejected), "stats": dict(self.stats),
        }
