"""Every shipped site config loads, and renders a batch script for each of its queues."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_tower.provisioner import Provisioner
from control_tower.site import load_site
from launchers import ScriptLauncher

SITES = sorted((Path(__file__).resolve().parents[2] / "examples" / "sites").glob("*.yaml"))


class _Tower:
    """Just what Provisioner.worker_spec reads."""

    worker_address = "tcp://login01:5555"
    on_worker_gone: list = []

    class messenger:
        @staticmethod
        def worker_dir(worker_id):
            return f"/shared/messenger/{worker_id}"

    class cfg:
        curve = True


@pytest.mark.parametrize("path", SITES, ids=[p.stem for p in SITES])
def test_site_loads_and_renders(path, tmp_path):
    site = load_site(path)
    assert site.queues
    provisioner = Provisioner(_Tower(), site.queues, tmp_path)
    for queue in site.queues:
        launcher = provisioner.launcher(queue.launcher, queue.name)
        spec = provisioner.worker_spec(queue, f"{queue.name}-00001")
        assert spec.ranks == queue.nodes * queue.ranks_per_node
        if isinstance(launcher, ScriptLauncher):
            script = launcher.render_script(spec)
            assert "hpc_edge worker" in script and "--worker-id" in script
            if queue.account:
                assert queue.account in script
            for directive in queue.extra_directives:
                assert directive in script


def test_there_are_sites_for_a_laptop_a_generic_slurm_and_real_machines():
    assert {"laptop", "slurm", "perlmutter", "frontier", "polaris"} <= {p.stem for p in SITES}


def test_workers_are_sized_to_the_backlog():
    from control_tower.provisioner import QueueConfig

    q = QueueConfig(name="q", launcher="slurm", walltime="1h", nodes=2, max_nodes=8, ranks_per_node=4,
                    cores_per_rank=2)
    assert [q.nodes_for(c) for c in (0, 8, 17, 24, 64, 65, 10_000)] == [2, 2, 3, 3, 8, 8, 8]
    assert QueueConfig(name="f", nodes=3).nodes_for(10_000) == 3  # no max_nodes: fixed size


def test_key_files_readable_by_others_are_refused(tmp_path):
    from hpc_edge.keys import KeyError_, create_keys, load_keypair

    create_keys(tmp_path)
    assert len(load_keypair(tmp_path, "client")[1]) == 40
    (tmp_path / "client.key_secret").chmod(0o644)
    with pytest.raises(KeyError_, match="readable by others"):
        load_keypair(tmp_path, "client")
    with pytest.raises(KeyError_, match="hpc-edge keys init"):
        load_keypair(tmp_path, "nobody")
