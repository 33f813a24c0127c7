"""PBSLauncher on recorded qsub/qstat/qdel outputs of OpenPBS, PBS Pro, Torque and slurm-wlm-torque.

Origins of every recording: tests/launchers/fixtures/README.md and each file's header.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from launchers import BatchState, CancelError, CommandError, LauncherError, StatusError, SubmitError, get_launcher
from launchers.pbs import PBS_STATES, parse_qstat, parse_qstat_full, parse_qstat_table, pbs_state

from launcher_testkit import golden_spec, recorded, recorded_argv, recorded_header

Q, R, D, F, C, U = (BatchState.QUEUED, BatchState.RUNNING, BatchState.DONE, BatchState.FAILED,
                    BatchState.CANCELLED, BatchState.UNKNOWN)

# The one-letter states of qstat(1B) (OpenPBS, Torque) and slurm-wlm-torque, written out independently.
EXPECTED = {"Q": Q, "H": Q, "W": Q, "T": Q, "R": R, "E": R, "S": R, "B": R, "U": U, "M": U,
            "C": D, "F": D, "X": D}


@pytest.mark.parametrize("letter, state", sorted(EXPECTED.items()))
def test_every_pbs_state_letter_has_an_explicit_mapping(letter, state):
    assert PBS_STATES[letter] is state
    assert pbs_state(letter) is state


def test_no_pbs_state_is_mapped_without_a_test():
    assert set(PBS_STATES) == set(EXPECTED)


@pytest.mark.parametrize("letter, exit_status, state", [
    ("C", "0", D), ("C", "-1", F), ("C", "271", F), ("F", "0", D), ("F", "3", F), ("X", "1", F),
    ("R", "0", R), ("F", "garbage", F),
])
def test_exit_status_refines_ended_jobs(letter, exit_status, state):
    assert pbs_state(letter, exit_status) is state


def test_unknown_letter_is_unknown():
    assert pbs_state("Z") is U


def test_u_means_a_resumable_suspend_in_openpbs_but_unknown_in_slurm_torque():
    assert pbs_state("U", flavor="openpbs") is R
    assert pbs_state("U", flavor="torque") is U
    assert get_launcher("pbs", flavor="openpbs").parse_status(
        "Job Id: 5.s\n    job_state = U\n") == {"5.s": R}


# -- OpenPBS / PBS Professional ---------------------------------------------------------------------

def test_openpbs_qsub_answer():
    assert get_launcher("pbs").parse_submit_output(recorded("pbs/openpbs-azhop-qsub.txt")) == "8.scheduler"


def test_openpbs_qstat_table():
    assert parse_qstat(recorded("pbs/openpbs-azhop-qstat.txt")) == {
        "6.scheduler": R, "7.scheduler": R, "8.scheduler": Q}


def test_openpbs_qstat_fx_of_a_finished_job():
    text = recorded("pbs/openpbs-azhop-qstat-fx-finished.txt")
    assert parse_qstat(text) == {"8.scheduler": D}
    attrs = parse_qstat_full(text)["8.scheduler"]
    assert attrs["job_state"] == "F" and attrs["Exit_status"] == "0"
    assert attrs["Variable_List"].endswith("PBS_O_QUEUE=workq,PBS_O_HOST=hpc-1.internal.cloudapp.net")
    assert attrs["project"] == "_pbs_project_default"  # the attribute after the wrapped ones is intact


def test_pbspro_12_qstat_f_with_tab_wrapped_values():
    text = recorded("pbs/pbspro-12-qstat-f.txt")
    assert parse_qstat(text) == {"68350.mycluster": Q, "69301.mycluster": R, "69302.mycluster": Q}
    attrs = parse_qstat_full(text)["69301.mycluster"]
    assert attrs["exec_vnode"] == "(b141:ncpus=16)+(b142:ncpus=16)+(b143:ncpus=16)+(b144:ncpus=16)"
    assert attrs["Submit_arguments"] == "job.sh"


# -- Torque -----------------------------------------------------------------------------------------

def test_torque_qstat_table():
    assert parse_qstat(recorded("pbs/torque-darwin-qstat.txt")) == {"24817.darwin": R}


def test_torque_admin_guide_completed_job_that_failed_to_start():
    text = recorded("pbs/torque-3.0.5-qstat-f-exit-status.txt")
    assert parse_qstat(text) == {"179.host": F}  # job_state C, exit_status -1
    assert parse_qstat_full(text)["179.host"]["sched_hint"].endswith("cannot find user 'user' in password file")


def test_torque_ichec_qstat_f_with_wrapped_values_and_an_empty_line():
    text = recorded("pbs/torque-ichec-qstat-f.txt")
    assert parse_qstat(text) == {"549159": Q, "555716": R, "546437": F, "547637": Q}
    jobs = parse_qstat_full(text)
    assert jobs["546437"]["exit_status"] == "271"
    assert jobs["549159"]["Error_Path"] == "host.domain:/some/path/to/sth/ASSP-1R-p/more/down/the/path/ASSP-1R.e549159"
    assert jobs["547637"]["Hold_Types"] == "n" and jobs["547637"]["submit_host"] == "host_546437.domain"


# -- slurm-wlm-torque (recorded here) ---------------------------------------------------------------

def test_slurm_torque_qsub_answer_is_the_bare_slurm_id():
    text = recorded("pbs/slurm-torque-qsub.txt")
    assert get_launcher("pbs").parse_submit_output(text) == text.strip() and text.strip().isdigit()


def test_slurm_torque_qstat_table():
    ok, fail, cancelled, running, pending, pbsjob = recorded_argv("pbs/slurm-torque-qstat.txt")[1:]
    assert parse_qstat(recorded("pbs/slurm-torque-qstat.txt")) == {
        ok: D, fail: D, cancelled: D, running: R, pending: Q, pbsjob: R}  # the wrapper shows every end as C


def test_slurm_torque_qstat_f_uses_tabs():
    ok, cancelled, running, pending = recorded_argv("pbs/slurm-torque-qstat-f.txt")[2:]
    text = recorded("pbs/slurm-torque-qstat-f.txt")
    assert parse_qstat(text) == {ok: D, cancelled: D, running: R, pending: Q}
    assert parse_qstat_full(text)[running]["queue"] == "debug"


def test_table_columns_are_cut_at_the_underline():
    # slurm-wlm-torque prints Slurm job names, which may contain spaces (constructed row).
    text = ("Job id              Name             Username        Time Use S Queue          \n"
            "------------------- ---------------- --------------- -------- - ---------------\n"
            "7                   my job name      root            00:00:00 R debug          \n")
    assert parse_qstat_table(text) == {"7": "R"}


def test_table_without_underline_is_an_error():
    with pytest.raises(LauncherError, match="no dashed header underline"):
        parse_qstat("7 ok.sh root 00:00:00 C debug\n")


def test_empty_output_means_no_jobs():
    assert parse_qstat("") == {}


# -- the launcher around the parsers ----------------------------------------------------------------

def test_argv_builders_per_flavor():
    spec = golden_spec()
    openpbs, torque = get_launcher("pbs"), get_launcher("pbs", flavor="torque")
    assert openpbs.submit_argv(Path("/w/s.sh"), spec) == [
        "qsub", "-o", str(spec.stdout_path), "-e", str(spec.stderr_path), "/w/s.sh"]
    assert openpbs.status_argv(["1.s", "2.s"]) == ["qstat", "-x", "-f", "1.s", "2.s"]
    assert torque.status_argv(["1.s"]) == ["qstat", "-f", "1.s"]
    assert torque.cancel_argv(["1.s", "2.s"]) == ["qdel", "1.s", "2.s"]
    with pytest.raises(LauncherError, match="flavor must be"):
        get_launcher("pbs", flavor="sge")


def test_queue_option_is_the_partition():
    script = get_launcher("pbs", queue="workq").render_script(golden_spec(partition=None))
    assert "#PBS -q workq\n" in script


@pytest.mark.parametrize("text", ["", "qsub: Unknown queue\n", "There was an error running the Slurm sbatch command."])
def test_bad_qsub_answer_is_a_submit_error(text):
    with pytest.raises(SubmitError, match="expected a job id"):
        get_launcher("pbs").parse_submit_output(text)


def test_status_matches_ids_by_sequence_number_when_the_server_suffix_differs(fake_commands):
    fake_commands.answer(["qstat"], recorded("pbs/torque-darwin-qstat.txt"))
    states = get_launcher("pbs", flavor="torque").status(["24817.darwin.example.edu", "24818.darwin"])
    assert states == {"24817.darwin.example.edu": R, "24818.darwin": U}


def test_unknown_ids_from_the_recorded_wrapper_are_unknown_not_an_error(fake_commands):
    rc = int(recorded_header("pbs/slurm-torque-qstat-unknown.txt")["exit code"])
    assert rc == 153
    fake_commands.answer(["qstat"], CommandError(["qstat"], rc, recorded("pbs/slurm-torque-qstat-unknown.txt"), ""))
    assert get_launcher("pbs", flavor="torque").status(["999999"]) == {"999999": U}


def test_torque_unknown_job_id_keeps_the_jobs_it_did_print(fake_commands):
    fake_commands.answer(["qstat"], CommandError(["qstat"], 153, recorded("pbs/torque-darwin-qstat.txt"),
                                                 "qstat: Unknown Job Id 24818.darwin\n"))
    states = get_launcher("pbs", flavor="torque").status(["24817.darwin", "24818.darwin"])
    assert states == {"24817.darwin": R, "24818.darwin": U}


def test_other_qstat_failures_are_status_errors(fake_commands):
    fake_commands.answer(["qstat"], CommandError(["qstat"], 1, "", "Connection refused\nqstat: cannot connect"))
    with pytest.raises(StatusError, match="cannot connect"):
        get_launcher("pbs").status(["1.s"])


def test_a_deleted_job_is_cancelled_even_though_qstat_says_completed(fake_commands):
    pbsjob = recorded_argv("pbs/slurm-torque-qstat-f-deleted.txt")[-1]
    fake_commands.answer(["qdel"], recorded("pbs/slurm-torque-qdel.txt"))
    fake_commands.answer(["qstat"], recorded("pbs/slurm-torque-qstat-f-deleted.txt"))
    assert get_launcher("pbs", flavor="torque").status([pbsjob]) == {pbsjob: D}
    launcher = get_launcher("pbs", flavor="torque")
    launcher.cancel([pbsjob])
    assert launcher.status([pbsjob]) == {pbsjob: C}


def test_qdel_of_an_already_ended_job_is_not_an_error(fake_commands):
    rc = int(recorded_header("pbs/slurm-torque-qdel-ended.txt")["exit code"])
    fake_commands.answer(["qdel"], CommandError(["qdel", "13"], rc, recorded("pbs/slurm-torque-qdel-ended.txt"), ""))
    get_launcher("pbs").cancel(["13"])


def test_qdel_refused_is_a_cancel_error(fake_commands):
    fake_commands.answer(["qdel"], CommandError(["qdel"], 159, "", "qdel: Unauthorized Request  1.s"))
    with pytest.raises(CancelError, match="Unauthorized Request"):
        get_launcher("pbs").cancel(["1.s"])
