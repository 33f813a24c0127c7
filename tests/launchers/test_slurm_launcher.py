"""SlurmLauncher without a cluster: argv builders, every state, recorded squeue/sacct/sbatch outputs.

The recorded outputs are from Slurm 22.05.8 on Debian 12 (tests/launchers/fixtures/README.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from launchers import BatchState, CommandError, LauncherError, StatusError, SubmitError, get_launcher
from launchers.slurm import SLURM_STATES, slurm_state

from launcher_testkit import golden_spec, recorded, recorded_header, recorded_job_ids

Q, R, D, F, C, U = (BatchState.QUEUED, BatchState.RUNNING, BatchState.DONE, BatchState.FAILED,
                    BatchState.CANCELLED, BatchState.UNKNOWN)

# What hpc-edge must make of every state squeue(1)/sacct(1) of Slurm 22.05 can print. Written out
# here, independently of launchers/slurm.py, so that changing a mapping fails a test.
EXPECTED = {
    "PENDING": Q, "CONFIGURING": Q, "POWER_UP_NODE": Q, "REQUEUED": Q, "REQUEUE_FED": Q,
    "REQUEUE_HOLD": Q, "RESV_DEL_HOLD": Q,
    "RUNNING": R, "COMPLETING": R, "SIGNALING": R, "RESIZING": R, "SUSPENDED": R, "STOPPED": R,
    "STAGE_OUT": R,
    "COMPLETED": D,
    "FAILED": F, "TIMEOUT": F, "NODE_FAIL": F, "BOOT_FAIL": F, "OUT_OF_MEMORY": F, "DEADLINE": F,
    "PREEMPTED": F, "LAUNCH_FAILED": F, "SPECIAL_EXIT": F,
    "CANCELLED": C, "REVOKED": C,
}


@pytest.mark.parametrize("word, state", sorted(EXPECTED.items()))
def test_every_slurm_state_has_an_explicit_mapping(word, state):
    assert SLURM_STATES[word] is state
    assert slurm_state(word) is state


def test_no_slurm_state_is_mapped_without_a_test():
    assert set(SLURM_STATES) == set(EXPECTED)


def test_sacct_forms_of_states():
    assert slurm_state("CANCELLED by 0") is C
    assert slurm_state("CANCELLED by 12345") is C
    assert slurm_state("OUT_OF_ME+") is U  # truncated column: never guess
    assert slurm_state("completed") is D


def test_unknown_state_is_unknown_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="launchers.slurm"):
        assert slurm_state("BRAND_NEW_STATE") is U
    assert "BRAND_NEW_STATE" in caplog.text


def test_argv_builders():
    launcher = get_launcher("slurm")
    spec = golden_spec()
    assert launcher.submit_argv(Path("/w/x.sh"), spec) == ["sbatch", "--parsable", "-D", str(spec.workdir), "/w/x.sh"]
    assert launcher.status_argv(["1", "2", "3"]) == ["squeue", "-h", "-t", "all", "-o", "%i %T", "--jobs=1,2,3"]
    assert launcher.sacct_argv(["1", "2"], jobcomp=False) == [
        "sacct", "-X", "-n", "-P", "-o", "JobID,State", "--jobs=1,2"]
    assert launcher.sacct_argv(["1"], jobcomp=True)[:2] == ["sacct", "-c"]
    assert launcher.cancel_argv(["1", "2"]) == ["scancel", "1", "2"]


def test_parse_recorded_sbatch_parsable():
    text = recorded("slurm/sbatch-parsable.txt")
    assert get_launcher("slurm").parse_submit_output(text) == text.strip()
    assert text.strip().isdigit()


@pytest.mark.parametrize("text, job_id", [("12345\n", "12345"), ("12345;cluster2\n", "12345"),
                                           ("sbatch: warning: x\n678\n", "678"), ("42_7\n", "42_7")])
def test_parse_sbatch_parsable_forms(text, job_id):
    assert get_launcher("slurm").parse_submit_output(text) == job_id


@pytest.mark.parametrize("text", ["", "Submitted batch job 12345\n", "sbatch: error: Batch job submission failed"])
def test_unparsable_sbatch_output_is_a_submit_error(text):
    with pytest.raises(SubmitError, match="expected '<jobid>"):
        get_launcher("slurm").parse_submit_output(text)


def test_parse_recorded_squeue_of_mixed_jobs():
    ok, fail, cancelled, running, timeout, pending, unknown = recorded_job_ids("slurm/squeue-mixed.txt")
    states = get_launcher("slurm").parse_status(recorded("slurm/squeue-mixed.txt"))
    assert states == {ok: D, fail: F, cancelled: C, running: R, timeout: R, pending: Q}
    assert unknown not in states


def test_parse_recorded_squeue_after_timeout():
    timeout, running, pending = recorded_job_ids("slurm/squeue-timeout.txt")
    states = get_launcher("slurm").parse_status(recorded("slurm/squeue-timeout.txt"))
    assert states == {timeout: F, running: C, pending: C}


def test_parse_recorded_sacct_jobcomp():
    ok, fail, cancelled, running, timeout, pending, deleted = recorded_job_ids("slurm/sacct-jobcomp.txt")
    states = get_launcher("slurm").parse_sacct(recorded("slurm/sacct-jobcomp.txt"))
    assert states == {ok: D, fail: F, cancelled: C, running: C, timeout: F, pending: C, deleted: C}


def test_garbage_status_line_is_an_error():
    with pytest.raises(LauncherError, match="cannot parse status line"):
        get_launcher("slurm").parse_status("12345\n")


def command_error(fixture: str, argv: list[str]) -> CommandError:
    """The CommandError run_command raises for a recorded failing command (its text was on stderr)."""
    rc = int(recorded_header(fixture)["exit code"])
    return CommandError(argv, rc, "", recorded(fixture))


def test_status_asks_squeue_once_for_all_ids(fake_commands):
    ids = recorded_job_ids("slurm/squeue-mixed.txt")
    fake_commands.answer(["squeue"], recorded("slurm/squeue-mixed.txt"))
    fake_commands.answer(["sacct", "-X"], command_error("slurm/sacct-disabled.txt", ["sacct"]))
    fake_commands.answer(["sacct", "-c"], "")
    states = get_launcher("slurm").status(ids)
    assert states[ids[0]] is D and states[ids[3]] is R and states[ids[-1]] is U
    squeue_calls = [argv for argv, _ in fake_commands.calls if argv[0] == "squeue"]
    assert squeue_calls == [["squeue", "-h", "-t", "all", "-o", "%i %T", f"--jobs={','.join(ids)}"]]


def test_forgotten_ids_fall_back_to_the_job_completion_log_once_slurmdbd_is_found_missing(fake_commands):
    ids = recorded_job_ids("slurm/sacct-jobcomp.txt")
    fake_commands.answer(["squeue"], recorded("slurm/squeue-unknown-only.txt"))  # squeue forgot them all
    fake_commands.answer(["sacct", "-X"], command_error("slurm/sacct-disabled.txt", ["sacct"]))
    fake_commands.answer(["sacct", "-c"], recorded("slurm/sacct-jobcomp.txt"))
    launcher = get_launcher("slurm")
    first = launcher.status(ids)
    assert [first[i] for i in ids] == [D, F, C, C, F, C, C]
    assert launcher.accounting == "jobcomp"
    launcher.status(ids[:1])
    sacct_calls = [argv[:2] for argv, _ in fake_commands.calls if argv[0] == "sacct"]
    assert sacct_calls == [["sacct", "-X"], ["sacct", "-c"], ["sacct", "-c"]]  # slurmdbd asked only once


def test_without_any_accounting_forgotten_ids_are_unknown(fake_commands):
    fake_commands.answer(["squeue"], "")
    fake_commands.answer(["sacct"], CommandError(["sacct"], 1, "", "sacct: error: not configured"))
    launcher = get_launcher("slurm")
    assert launcher.status(["77", "78"]) == {"77": U, "78": U}
    assert launcher.accounting == "none"
    launcher.status(["77"])
    assert sum(argv[0] == "sacct" for argv, _ in fake_commands.calls) == 2  # never asked again


def test_accounting_none_never_calls_sacct(fake_commands):
    fake_commands.answer(["squeue"], "")
    assert get_launcher("slurm", accounting="none").status(["5"]) == {"5": U}
    assert [argv[0] for argv, _ in fake_commands.calls] == ["squeue"]


def test_sacct_with_slurmdbd_reports_cancelled_by_uid(fake_commands):
    fake_commands.answer(["squeue"], "")
    fake_commands.answer(["sacct", "-X"], "91|CANCELLED by 0\n92|COMPLETED\n93|OUT_OF_MEMORY\n")
    launcher = get_launcher("slurm", accounting="sacct")
    assert launcher.status(["91", "92", "93", "94"]) == {"91": C, "92": D, "93": F, "94": U}


def test_squeue_invalid_job_id_error_means_unknown_not_failure(fake_commands):
    fake_commands.answer(["squeue"], command_error("slurm/squeue-unknown-without-t-all.txt", ["squeue"]))
    assert get_launcher("slurm", accounting="none").status(["999999"]) == {"999999": U}


def test_squeue_failure_is_a_status_error(fake_commands):
    fake_commands.answer(["squeue"], CommandError(["squeue"], 1, "", "slurm_load_jobs error: Unable to contact "
                                                  "slurm controller (connect failure)"))
    with pytest.raises(StatusError, match="Unable to contact slurm controller"):
        get_launcher("slurm").status(["1"])


def test_submit_writes_the_script_and_runs_sbatch_without_a_shell(fake_commands, tmp_path):
    fake_commands.answer(["sbatch"], "4242;cluster\n")
    spec = golden_spec(workdir=tmp_path / "w")
    assert get_launcher("slurm").submit(spec) == "4242"
    (argv, stdin), = fake_commands.calls
    script = tmp_path / "w" / "w-000042.slurm.sh"
    assert argv == ["sbatch", "--parsable", "-D", str(tmp_path / "w"), str(script)]
    assert stdin is None
    assert script.read_text().startswith("#!/bin/bash\n#SBATCH --job-name=edge-w-000042\n")


def test_cancel_runs_scancel(fake_commands):
    fake_commands.answer(["scancel"], "")
    get_launcher("slurm").cancel(["5", "6"])
    assert fake_commands.calls == [(["scancel", "5", "6"], None)]


def test_bad_accounting_option_is_rejected():
    with pytest.raises(LauncherError, match="accounting must be"):
        get_launcher("slurm", accounting="maybe")
