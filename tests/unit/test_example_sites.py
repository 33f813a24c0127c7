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
