"""The CLI's tables print whole: a number or a name is never cut to fit the terminal."""

from __future__ import annotations

from control_tower.cli import _print_status


def test_status_of_a_million_jobs_in_80_columns_shows_every_figure_whole(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a terminal of 80 columns, or a pipe (rich's default)
    _print_status({"address": "tcp://login1:5555", "workers": 12, "ready": 999_000,
                   "tasks": [{"task_id": 1, "name": "reconstruction-2026", "jobs": 1_000_000,
                              "states": {"activated": 999_000, "running": 640, "finished": 360}}]}, False)
    out = capsys.readouterr().out

    assert "…" not in out
    row = next(line for line in out.splitlines() if "reconstruction-2026" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]] == [
        "1", "reconstruction-2026", "1000000", "999000", "0", "640", "360", "0", "0"]
    assert all(h in out for h in ("activated", "finished", "cancelled"))
