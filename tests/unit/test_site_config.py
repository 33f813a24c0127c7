"""Site configuration files: a good one loads as written, a typo names the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_tower.site import SiteError, load_site, parse_site

DATA = Path(__file__).parent / "data"


def error_line(message: str, word: str) -> str:
    hits = [line for line in message.splitlines() if word in line]
    assert len(hits) == 1, f"expected one line naming {word!r} in:\n{message}"
    return hits[0]


def queue_yaml(*lines: str) -> str:
    """A site with one queue; ``lines`` go under the queue, so the first of them is on line 4."""
    return "queues:\n  - name: q\n    launcher: slurm\n" + "".join(f"    {line}\n" for line in lines)


def test_good_site_loads_as_written():
    site = load_site(DATA / "site_good.yaml")

    assert site.name == "cluster"
    assert site.tower.bind == "tcp://0.0.0.0:5555"
    assert site.tower.heartbeat_s == 5.0
    assert site.tower.exit_when_done is True
    assert site.tower.lost_after_s == 120.0  # default kept
    assert site.api.bind is None
    assert site.provision_interval_s == 10.0
    short, long = site.queues
    assert (short.name, short.launcher, short.partition, short.max_running) == ("short", "slurm", "debug", 3)
    assert (short.nodes, short.ranks_per_node, short.cores_per_rank, short.ranks) == (2, 4, 8, 8)
    assert short.walltime == 5400.0
    assert (long.name, long.account, long.walltime) == ("long", "phys123", 7200.0)
    assert (long.nodes, long.ranks_per_node) == (1, 2)  # defaults


def test_empty_site_is_one_local_queue():
    site = parse_site("")

    assert [(q.name, q.launcher, q.walltime) for q in site.queues] == [("local", "local", None)]
    assert site.api.bind == "127.0.0.1:0"


def test_typo_under_queues_names_file_line_and_key():
    path = DATA / "site_typo_queue.yaml"
    with pytest.raises(SiteError) as err:
        load_site(path)

    line = error_line(str(err.value), "cores_per_rnk")
    assert line.startswith(f"{path}:9:")
    assert "unknown key 'cores_per_rnk'" in line


@pytest.mark.parametrize("text, line_no, key", [
    ("name: s\ntower:\n  heartbeat: 5\n", 3, "heartbeat"),
    ("name: s\napi:\n  port: 8080\n", 3, "port"),
    ("name: s\nqueue:\n  - name: q\n", 2, "queue"),
])
def test_typo_elsewhere_names_line_and_key(text, line_no, key):
    with pytest.raises(SiteError) as err:
        parse_site(text, "site.yaml")

    assert error_line(str(err.value), f"'{key}'").startswith(f"site.yaml:{line_no}:")


@pytest.mark.parametrize("walltime, seconds", [("'01:30:00'", 5400.0), ("1:30:00", 5400.0), ("30:00", 1800.0),
                                               ("2h", 7200.0), ("45m", 2700.0), ("90", 90.0), ("1d", 86400.0)])
def test_queue_walltime_strings_parse(walltime, seconds):
    (queue,) = parse_site(queue_yaml(f"walltime: {walltime}")).queues

    assert queue.walltime == seconds


def test_only_a_local_queue_may_have_no_walltime():
    (queue,) = parse_site("queues:\n  - name: q\n    launcher: local\n    walltime: null\n").queues
    assert queue.walltime is None
    with pytest.raises(SiteError, match=r"site.yaml:2: queues.0: queue 'q': a slurm queue needs a walltime"):
        parse_site(queue_yaml("walltime: null"), "site.yaml")


@pytest.mark.parametrize("walltime", ["2 hours", "1h30m", "0", "-1h", "'1:2:3'"])
def test_bad_queue_walltime_names_its_line(walltime):
    with pytest.raises(SiteError) as err:
        parse_site(queue_yaml("nodes: 2", f"walltime: {walltime}"), "site.yaml")

    line = error_line(str(err.value), "walltime")
    assert line.startswith("site.yaml:5: queues.0.walltime:")


@pytest.mark.parametrize("entry, key", [("launcher: sge", "launcher"), ("nodes: 0", "nodes"),
                                        ("nodes: 1.5", "nodes"), ("name: 'bad name'", "name")])
def test_bad_queue_values_name_the_key(entry, key):
    with pytest.raises(SiteError) as err:
        parse_site("queues:\n  - " + entry + "\n", "site.yaml")

    assert error_line(str(err.value), f"queues.0.{key}").startswith("site.yaml:2:")


def test_site_that_is_not_a_mapping_is_rejected():
    with pytest.raises(SiteError, match=r"^site\.yaml: a site config is a mapping$"):
        parse_site("- queues\n", "site.yaml")


def test_site_that_is_not_yaml_is_rejected():
    with pytest.raises(SiteError, match=r"^site\.yaml: not valid YAML"):
        parse_site("queues: [\n", "site.yaml")


def test_missing_site_file_names_the_file(tmp_path):
    with pytest.raises(SiteError, match=r"absent\.yaml: cannot read"):
        load_site(tmp_path / "absent.yaml")


@pytest.mark.parametrize("walltime", [".nan", ".inf"])
def test_non_finite_queue_walltime_is_rejected(walltime):
    with pytest.raises(SiteError) as err:
        parse_site(queue_yaml(f"walltime: {walltime}"), "site.yaml")

    assert error_line(str(err.value), "walltime").startswith("site.yaml:4:")
