"""LSFLauncher on recorded bsub/bjobs/bkill outputs (Platform LSF 7, IBM LSF 9.1.3).

Origins: tests/launchers/fixtures/README.md. No public recording of the exact ``bjobs -o 'jobid:10
stat:10'`` layout was found; tests of that layout build their lines from IBM Spectrum LSF 10.1's
description of ``-o`` (each field left-justified, padded to its width) and say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launchers import BatchState, CancelError, CommandError, LauncherError, StatusError, SubmitError, get_launcher
from launchers.lsf import LSF_STATES, lsf_state, parse_bjobs

from launcher_testkit import golden_spec, recorded

Q, R, D, F, C, U = (BatchState.QUEUED, BatchState.RUNNING, BatchState.DONE, BatchState.FAILED,
                    BatchState.CANCELLED, BatchState.UNKNOWN)

# bjobs STAT values (IBM Spectrum LSF 10.1 "JOB STATUS"), written out independently of lsf.py.
EXPECTED = {"PEND": Q, "PSUSP": Q, "WAIT": Q, "PROV": Q, "RUN": R, "USUSP": R, "SSUSP": R, "UNKWN": R,
            "DONE": D, "POST_DONE": D, "EXIT": F, "POST_ERR": F, "ZOMBI": F}


@pytest.mark.parametrize("stat, state", sorted(EXPECTED.items()))
def test_every_lsf_state_has_an_explicit_mapping(stat, state):
    assert LSF_STATES[stat] is state
    assert lsf_state(stat) is state


def test_no_lsf_state_is_mapped_without_a_test():
    assert set(LSF_STATES) == set(EXPECTED)
    assert lsf_state("NEWSTATE") is U


@pytest.mark.parametrize("fixture, job_id", [("lsf/lsf7-bsub.txt", "473713"), ("lsf/lsf9-bsub.txt", "764254593")])
def test_recorded_bsub_answers(fixture, job_id):
    assert get_launcher("lsf").parse_submit_output(recorded(fixture)) == job_id


def test_bsub_answer_with_default_queue():
    # the wording when no -q is given (bsub(1) of LSF 10.1); constructed line
    assert get_launcher("lsf").parse_submit_output("Job <1131> is submitted to default queue <normal>.\n") == "1131"


@pytest.mark.parametrize("text", ["", "normal: No such queue. Job not submitted.\n"])
def test_bad_bsub_answer_is_a_submit_error(text):
    with pytest.raises(SubmitError, match="expected 'Job <id> is submitted"):
        get_launcher("lsf").parse_submit_output(text)


@pytest.mark.parametrize("fixture, state", [("lsf/lsf7-bjobs-pend.txt", Q), ("lsf/lsf7-bjobs-run.txt", R),
                                            ("lsf/lsf7-bjobs-exit.txt", F)])
def test_recorded_default_bjobs_tables(fixture, state):
    assert parse_bjobs(recorded(fixture)) == {"473713": state}


def test_bjobs_o_layout():
    # built per IBM LSF 10.1 `bjobs -o "jobid:10 stat:10" -noheader`: two left-justified 10-wide fields
    text = "".join(f"{job:<10} {stat:<10}\n" for job, stat in
                   [("473713", "PEND"), ("473714", "RUN"), ("473715", "DONE"), ("473716", "EXIT"),
                    ("473717", "USUSP")])
    assert parse_bjobs(text) == {"473713": Q, "473714": R, "473715": D, "473716": F, "473717": R}


def test_bjobs_line_without_a_state_is_an_error():
    with pytest.raises(LauncherError, match="cannot parse bjobs line"):
        parse_bjobs("473713\n")


def test_argv_builders():
    launcher = get_launcher("lsf")
    assert launcher.submit_argv(Path("/w/s.sh"), golden_spec()) == ["bsub", "-L", "/bin/sh"]
    assert launcher.status_argv(["1", "2"]) == ["bjobs", "-a", "-noheader", "-o", "jobid:10 stat:10", "1", "2"]
    assert launcher.cancel_argv(["1", "2"]) == ["bkill", "1", "2"]
    assert get_launcher("lsf", login_shell="/bin/bash").submit_argv(Path("/w/s.sh"), golden_spec())[-1] == "/bin/bash"


def test_submit_pipes_the_script_to_bsub_stdin_without_a_shell(fake_commands, tmp_path):
    fake_commands.answer(["bsub"], recorded("lsf/lsf7-bsub.txt"))
    spec = golden_spec(workdir=tmp_path / "w")
    assert get_launcher("lsf").submit(spec) == "473713"
    (argv, stdin), = fake_commands.calls
    assert argv == ["bsub", "-L", "/bin/sh"]
    script = (tmp_path / "w" / "w-000042.lsf.sh").read_text()
    assert stdin == script and "#BSUB -J edge-w-000042\n" in stdin


def test_submit_failure_names_the_script(fake_commands, tmp_path):
    fake_commands.answer(["bsub"], CommandError(["bsub"], 255, "", "Bad resource requirement syntax"))
    with pytest.raises(SubmitError, match=r"w-000042\.lsf\.sh failed: bsub exited 255: Bad resource"):
        get_launcher("lsf").submit(golden_spec(workdir=tmp_path))


def test_status_keeps_known_jobs_when_bjobs_says_one_is_not_found(fake_commands):
    # bjobs exits 255 and writes the recorded "Job <864220165> is not found" on stderr for the gone id
    stdout = "473713     RUN       \n"
    fake_commands.answer(["bjobs"], CommandError(["bjobs"], 255, stdout, recorded("lsf/lsf9-bjobs-not-found-stderr.txt")))
    assert get_launcher("lsf").status(["473713", "864220165"]) == {"473713": R, "864220165": U}


def test_other_bjobs_failures_are_status_errors(fake_commands):
    fake_commands.answer(["bjobs"], CommandError(["bjobs"], 255, "", "LSF is down. Please wait ..."))
    with pytest.raises(StatusError, match="LSF is down"):
        get_launcher("lsf").status(["1"])


def test_a_killed_job_is_cancelled_not_failed(fake_commands):
    fake_commands.answer(["bkill"], recorded("lsf/lsf7-bkill.txt"))
    fake_commands.answer(["bjobs"], recorded("lsf/lsf7-bjobs-exit.txt"))
    assert get_launcher("lsf").status(["473713"]) == {"473713": F}
    launcher = get_launcher("lsf")
    launcher.cancel(["473713"])
    assert launcher.status(["473713"]) == {"473713": C}


def test_bkill_of_a_finished_job_is_not_an_error_but_other_failures_are(fake_commands):
    fake_commands.answer(["bkill", "1"], CommandError(["bkill"], 255, "", "Job <1>: Job has already finished"))
    fake_commands.answer(["bkill", "2"], CommandError(["bkill"], 255, "", "Job <2>: User permission denied"))
    get_launcher("lsf").cancel(["1"])
    with pytest.raises(CancelError, match="permission denied"):
        get_launcher("lsf").cancel(["2"])


def test_slots_and_ptile_count_cores():
    script = get_launcher("lsf", queue="short").render_script(golden_spec(partition=None))
    assert "#BSUB -n 16\n#BSUB -R \"span[ptile=8]\"\n" in script  # 2 nodes x 4 ranks x 2 cores
    assert "#BSUB -q short\n" in script
