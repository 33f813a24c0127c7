"""A ZeroMQ client without a key the tower knows gets nothing, and is logged and counted."""

from __future__ import annotations

import json

import pytest
import zmq

from hpc_edge import protocol as p
from hpc_edge.keys import load_public
from tests.helpers import run_cli, wait_for, write_workload

pytestmark = pytest.mark.mpi


def test_unknown_and_plain_clients_are_refused(tmp_path):
    home = tmp_path / "tower"
    env = {"HPC_EDGE_HOME": str(home)}
    site = write_workload(tmp_path, "queues: []\n", "site.yaml")
    run_cli("tower", "start", "--site", site, env=env, check=True)
    ctx = zmq.Context()
    try:
        run_cli("submit", write_workload(tmp_path, "name: s\ntasks: [{name: a, command: 'true', count: 3}]\n"),
                env=env, check=True)
        address = json.loads((home / "tower.json").read_text())["tower"]
        intruder_public, intruder_secret = zmq.curve_keypair()
        sockets = []
        for curve in (True, False):   # a stranger's own key pair, and no CURVE at all
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IDENTITY, b"intruder")
            if curve:
                sock.curve_publickey, sock.curve_secretkey = intruder_public, intruder_secret
                sock.curve_serverkey = load_public(home / "keys", "server")
            sock.connect(address)
            sock.send(p.encode(p.Hello(worker_id="intruder", ranks=[p.RankInfo(rank=0, host="x", cores=64,
                                                                                memory_mb=1000)])))
            sock.send(p.encode(p.Request(req=1, cores=64, max_job_cores=64, max_job_memory_mb=1000)))
            sockets.append(sock)

        def refused():
            st = json.loads(run_cli("status", "--json", env=env, check=True).stdout)
            return st if st["rejected"].get("refused_connections", 0) >= 2 else None

        st = wait_for(refused, 60, "both handshakes refused and counted")
        for sock in sockets:
            assert sock.poll(500) == 0, "a refused client must receive nothing"
        assert st["totals"] == {"activated": 3} and st["workers"] == 0
        assert "refused a connection" in (home / "tower.log").read_text()
    finally:
        ctx.destroy(linger=0)
        run_cli("tower", "stop", env=env)
