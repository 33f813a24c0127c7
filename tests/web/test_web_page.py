"""The tower's web page in a real browser (headless Chromium): what a user sees of a running tower."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile

import pytest

from tests.helpers import local_tower_site, run_cli, wait_for, write_workload

pytestmark = pytest.mark.browser


def rendered(browser: str, url: str) -> str:
    """The page's DOM once its scripts have fetched and drawn (virtual time lets them finish first)."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_page_shows_jobs_by_task_workers_and_failures_as_text(browser, tmp_path):
    home, env, site = local_tower_site(tmp_path)
    workload = write_workload(tmp_path, """
name: page
tasks:
  - name: fine
    command: /bin/true
    count: 5
  - name: broken        # its diagnostic carries markup: the page shows it as text
    command: |-
      echo '{"exitCode": 65, "exitMsg": "<b id=injected>boom</b>"}' > jobReport.json
    count: 2
    max_attempts: 1
""")
    run_cli("tower", "start", "--site", site, env=env, check=True)
    try:
        run_cli("submit", workload, env=env, check=True)
        wait_for(lambda: json.loads(run_cli("status", "--json", env=env, check=True).stdout)["totals"]
                 == {"finished": 5, "failed": 2}, 120, "all 7 jobs final")
        api = json.loads((home / "tower.json").read_text())["api"]
        dom = rendered(browser, f"{api}/")
    finally:
        run_cli("tower", "stop", env=env)

    def count(task: str, state: str) -> int:
        row = re.search(rf'<tr data-task="{task}">(.*?)</tr>', dom)
        assert row, f"no row for task {task}: {dom[-3000:]}"
        return int(re.search(rf'<td data-state="{state}">(\d+)</td>', row[1])[1])

    assert (count("fine", "finished"), count("fine", "failed")) == (5, 0)
    assert (count("broken", "finished"), count("broken", "failed")) == (0, 2)
    assert "7 jobs, 5 finished" in dom
    # the worker, idle but not drained (idle_drain_s: 60), among the live ones
    assert '<div id="worker-states">1 running</div>' in dom
    assert len(re.findall(r'<tr data-worker="local-\d+">', dom)) == 1
    failed = re.findall(r'<tr data-job="(\d+)">(.*?)</tr>', dom)
    assert len(failed) == 2
    for job_id, row in failed:
        assert "jobReport.json: exitCode 65: &lt;b id=injected&gt;boom&lt;/b&gt;" in row
        assert f'href="/api/jobs/{job_id}/log/stderr"' in row
    assert 'id="injected"' not in dom  # no element was made of it
    assert '<div id="error"></div>' in dom  # every call of the page's succeeded
