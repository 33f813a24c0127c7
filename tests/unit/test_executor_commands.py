"""How a task's command becomes a payload process: exec'd directly, or through /bin/sh when it needs a
shell. Real payload processes."""

from __future__ import annotations

from hpc_edge.errors import ErrorCode
from tests.unit.test_executor_stop import ended, ex, spec, step_until  # noqa: F401 (ex: the executor fixture)


def test_shell_built_ins_run_in_a_shell_though_they_need_no_special_character(ex, tmp_path):
    # "exit 3" has no character that asks for a shell, and no program "exit" exists: exec'd directly,
    # it failed to start (1003, retried as such) instead of exiting 3
    ex.add([spec(tmp_path, 1, "exit 3"), spec(tmp_path, 2, "cd /"), spec(tmp_path, 3, "ulimit -c 0"),
            spec(tmp_path, 4, "true extra words")])
    events = ended(step_until(ex, lambda ev: len(ended(ev)) == 4))

    assert (events[1].state, events[1].exit_code, events[1].error_code) == ("failed", 3, ErrorCode.NONZERO_EXIT)
    assert [(events[i].state, events[i].exit_code) for i in (2, 3, 4)] == [("finished", 0)] * 3
