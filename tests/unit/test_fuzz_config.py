"""Fuzzed workload and site files: whatever the text, the result is a valid config or one clear error."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_tower.site import SiteConfig, SiteError, parse_site
from control_tower.workload import Workload, WorkloadError, parse_workload

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=20))
keys = st.sampled_from(["name", "tasks", "command", "count", "inputs", "files_per_job", "cores", "memory_mb",
                        "walltime", "env", "outputs", "max_attempts", "priority", "event_service", "events",
                        "events_per_range", "files", "limits", "retry_on", "retry_backoff", "queues", "tower",
                        "launcher", "nodes", "bind", "api", "looping", "x"])
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=6)), max_leaves=25)
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(trees)
def test_workload_structures(tree):
    text = yaml.safe_dump(tree)
    try:
        workload = parse_workload(text, "fuzz.yaml")
    except WorkloadError as exc:
        assert str(exc).startswith("fuzz.yaml")
    else:
        assert isinstance(workload, Workload) and workload.tasks


@FUZZ
@given(st.text(max_size=300))
def test_workload_text(text):
    try:
        parse_workload(text, "fuzz.yaml")
    except WorkloadError as exc:
        assert str(exc).startswith("fuzz.yaml")


@FUZZ
@given(trees)
def test_site_structures(tree):
    try:
        site = parse_site(yaml.safe_dump(tree), "site.yaml")
    except SiteError as exc:
        assert str(exc).startswith("site.yaml")
    else:
        assert isinstance(site, SiteConfig)


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "command", "count", "cores", "walltime", "outputs", "env",
                                        "max_attempts", "limits", "retry_on"]), scalars, max_size=8))
def test_one_task_with_fuzzed_fields(fields):
    task = {"name": "t", "command": "true", "count": 1, **fields}
    try:
        parse_workload(yaml.safe_dump({"tasks": [task]}), "fuzz.yaml")
    except WorkloadError as exc:
        assert str(exc).startswith("fuzz.yaml")
