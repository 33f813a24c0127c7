"""Workload files: what a user writes, what they get back, and what a mistake tells them."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_tower.workload import (WorkloadError, expand, load_workload, parse_duration, parse_workload,
                                    render_command)

DATA = Path(__file__).parent / "data"


def task_yaml(*extra_lines: str, name: str = "t", command: str = "run {index}") -> str:
    """A one-task workload; ``extra_lines`` go under the task, so the first of them is on line 5."""
    lines = ["name: w", "tasks:", f"  - name: {name}", f"    command: {command}"]
    lines += [f"    {line}" for line in extra_lines]
    return "\n".join(lines) + "\n"


def error_line(message: str, word: str) -> str:
    """The one line of a (possibly multi-line) error message that mentions ``word``."""
    hits = [line for line in message.splitlines() if word in line]
    assert len(hits) == 1, f"expected one line naming {word!r} in:\n{message}"
    return hits[0]


# ---- good files -------------------------------------------------------------------------------

def test_good_file_loads_with_every_field_as_written():
    workload = load_workload(DATA / "workload_good.yaml")

    assert workload.name == "sample"
    simulate, reco = workload.tasks
    assert (simulate.name, simulate.count, simulate.inputs) == ("simulate", 4, None)
    assert (simulate.cores, simulate.memory_mb, simulate.priority) == (2, 1000, 5)
    assert simulate.walltime == 1800.0
    assert simulate.outputs == ["out.dat", "logs/sim.log"]
    assert reco.count is None
    assert reco.inputs == ["a.root", "b.root", "c d.root", "e.root", "f.root"]
    assert reco.files_per_job == 2
    assert reco.walltime == 5400.0
    assert reco.env == {"RECO_MODE": "fast"}
    assert reco.max_attempts == 2
    assert reco.command == "reco {inputs} --config ${HOME}/reco.cfg --job {job_id} --try {attempt}"


def test_defaults_of_a_minimal_task():
    (task,) = parse_workload(task_yaml("count: 1")).tasks

    assert (task.cores, task.memory_mb, task.walltime) == (1, 0, 3600.0)
    assert (task.max_attempts, task.priority, task.files_per_job) == (3, 0, 1)
    assert task.env == {} and task.outputs == []


def test_load_workload_sets_workload_dir_to_the_files_directory():
    workload = load_workload(DATA / "workload_good.yaml")

    assert {t.workload_dir for t in workload.tasks} == {str(DATA.resolve())}


def test_an_explicit_workload_dir_is_kept():
    (task,) = parse_workload(task_yaml("count: 1", "workload_dir: /data/run7"), workload_dir="/elsewhere").tasks

    assert task.workload_dir == "/data/run7"


def test_shell_variable_syntax_is_not_a_placeholder():
    command = 'echo ${HOME} ${SLURM_JOB_ID:-none} > "${TMPDIR}/{index}.txt"'
    (task,) = parse_workload(task_yaml("count: 1", command=f"'{command}'")).tasks

    assert task.command == command


# ---- bad files --------------------------------------------------------------------------------

def test_typo_command_key_names_file_line_and_key():
    path = DATA / "workload_typo_command.yaml"
    with pytest.raises(WorkloadError) as err:
        load_workload(path)

    line = error_line(str(err.value), "comand")
    assert line.startswith(f"{path}:7:")
    assert "unknown key 'comand'" in line


def test_typo_cores_key_names_file_line_and_key():
    path = DATA / "workload_typo_cores.yaml"
    with pytest.raises(WorkloadError) as err:
        load_workload(path)

    line = error_line(str(err.value), "cores_per_job")
    assert line.startswith(f"{path}:6:")
    assert "unknown key 'cores_per_job'" in line


def test_typo_at_top_level_names_its_line():
    text = "name: w\ntask:\n  - name: t\n    command: x\n    count: 1\n"
    with pytest.raises(WorkloadError) as err:
        parse_workload(text, "jobs.yaml")

    assert error_line(str(err.value), "'task'").startswith("jobs.yaml:2:")


def test_missing_both_count_and_inputs_is_rejected_at_the_task():
    with pytest.raises(WorkloadError) as err:
        parse_workload(task_yaml("cores: 2"), "w.yaml")

    assert error_line(str(err.value), "exactly one of 'count' or 'inputs'").startswith("w.yaml:3:")


def test_both_count_and_inputs_is_rejected_at_the_task():
    with pytest.raises(WorkloadError) as err:
        parse_workload(task_yaml("count: 2", "inputs: [a, b]"), "w.yaml")

    assert error_line(str(err.value), "exactly one of 'count' or 'inputs'").startswith("w.yaml:3:")


def test_unknown_placeholder_is_rejected_on_the_command_line():
    with pytest.raises(WorkloadError) as err:
        parse_workload(task_yaml("count: 1", command="run {idx}"), "w.yaml")

    line = error_line(str(err.value), "{idx}")
    assert line.startswith("w.yaml:4:")
    assert "unknown placeholder {idx}" in line


@pytest.mark.parametrize("walltime", ["90x", "1h30m", "ten minutes", "-5m", "'1:2:3'", "0", "0:00", "''"])
def test_bad_walltime_is_rejected_on_its_line(walltime):
    with pytest.raises(WorkloadError) as err:
        parse_workload(task_yaml("count: 1", f"walltime: {walltime}"), "w.yaml")

    assert error_line(str(err.value), "walltime").startswith("w.yaml:6:")


@pytest.mark.parametrize("walltime", [".nan", ".inf"])
def test_non_finite_walltime_is_rejected(walltime):
    with pytest.raises(WorkloadError) as err:
        parse_workload(task_yaml("count: 1", f"walltime: {walltime}"), "w.yaml")

    assert error_line(str(err.value), "walltime").startswith("w.yaml:6:")


@pytest.mark.parametrize("output", ["../x", "/etc/passwd", "a/../../b", "''"])
def test_output_escaping_the_job_directory_is_rejected(output):
    with pytest.raises(WorkloadError) as err:
        parse_workload(task_yaml("count: 1", "outputs:", f"  - {output}"), "w.yaml")

    line = error_line(str(err.value), "outputs")
    assert line.startswith("w.yaml:6:")
    assert "must be a relative path inside the job's directory" in line


def test_duplicate_task_names_are_rejected_naming_the_task():
    text = ("tasks:\n"
            "  - {name: sim, command: a, count: 1}\n"
            "  - {name: reco, command: b, count: 1}\n"
            "  - {name: sim, command: c, count: 1}\n")
    with pytest.raises(WorkloadError) as err:
        parse_workload(text, "w.yaml")

    assert str(err.value).startswith("w.yaml:")
    assert "two tasks are named 'sim'" in str(err.value)


@pytest.mark.parametrize("text", ["tasks: [unclosed\n", "\tname: tab-indented\n", "a: b: c\n"])
def test_text_that_is_not_yaml_is_rejected(text):
    with pytest.raises(WorkloadError, match=r"^w\.yaml: not valid YAML"):
        parse_workload(text, "w.yaml")


@pytest.mark.parametrize("text", ["- name: t\n  command: x\n  count: 1\n", "just a sentence\n", ""])
def test_a_workload_that_is_not_a_mapping_is_rejected(text):
    with pytest.raises(WorkloadError, match=r"^w\.yaml: a workload is a mapping with a 'tasks' list$"):
        parse_workload(text, "w.yaml")


def test_an_empty_task_list_is_rejected():
    with pytest.raises(WorkloadError) as err:
        parse_workload("name: w\ntasks: []\n", "w.yaml")

    assert error_line(str(err.value), "tasks").startswith("w.yaml:2:")


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(WorkloadError, match=r"nope\.yaml: cannot read"):
        load_workload(path)


def test_binary_file_is_a_workload_error_naming_the_file(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(b"\x7fELF\xff\xfe\x00\x01binary")
    with pytest.raises(WorkloadError, match=r"payload\.bin"):
        load_workload(path)


# ---- durations --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, seconds", [
    (90, 90.0), (90.5, 90.5), ("90", 90.0), ("90s", 90.0), ("90 s", 90.0), ("30m", 1800.0),
    ("2h", 7200.0), ("1.5h", 5400.0), ("1d", 86400.0), ("01:30:00", 5400.0), ("1:30:00", 5400.0),
    ("30:00", 1800.0), ("0:45", 45.0), ("36:00:00", 129600.0), (" 2h ", 7200.0),
])
def test_parse_duration_forms(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [
    "", "abc", "2 hours", "1h30m", "30min", "-5", "-5m", "1:2:3", "1:2", "::", "01:30:00:00", "5H",
    0, -1, "0", "0s", "00:00:00", True, None,
])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


# ---- expansion --------------------------------------------------------------------------------

def test_count_task_expands_to_count_jobs_without_inputs():
    (task,) = parse_workload(task_yaml("count: 3")).tasks

    assert task.n_jobs == 3
    assert [(j.index, j.inputs) for j in expand(task)] == [(0, None), (1, None), (2, None)]


def test_inputs_are_grouped_by_files_per_job_and_the_last_job_takes_the_rest():
    (task,) = parse_workload(task_yaml("inputs: [a, b, c, d, e]", "files_per_job: 2")).tasks

    assert task.n_jobs == 3
    assert [task.job_inputs(i) for i in range(3)] == [["a", "b"], ["c", "d"], ["e"]]
    assert [(j.index, j.inputs) for j in expand(task)] == [(0, ["a", "b"]), (1, ["c", "d"]), (2, ["e"])]


def test_one_input_per_job_by_default():
    (task,) = parse_workload(task_yaml("inputs: [x.dat, y.dat]")).tasks

    assert task.n_jobs == 2
    assert [j.inputs for j in expand(task)] == [["x.dat"], ["y.dat"]]


def test_expand_is_lazy_for_huge_counts():
    (task,) = parse_workload(task_yaml("count: 100000000")).tasks
    jobs = expand(task)

    assert task.n_jobs == 100_000_000
    assert next(jobs).index == 0
    assert next(jobs).index == 1


# ---- rendering --------------------------------------------------------------------------------

def test_render_command_substitutes_every_placeholder():
    template = "cd {workload_dir} && run --task {task} --i {index} --job {job_id} --try {attempt} {inputs}"
    command = render_command(template, index=4, inputs=["a.root", "b.root"], job_id=1234, attempt=2,
                             task="reco", workload_dir="/data/run7")

    assert command == "cd /data/run7 && run --task reco --i 4 --job 1234 --try 2 a.root b.root"


def test_render_command_shell_quotes_inputs_and_workload_dir():
    command = render_command("ls {inputs} {workload_dir}", index=0, inputs=["c d.root", "x;rm -rf ~", "$(id)"],
                             job_id=1, attempt=1, task="t", workload_dir="/my data")

    assert command == "ls 'c d.root' 'x;rm -rf ~' '$(id)' '/my data'"


def test_render_command_leaves_shell_variables_alone():
    command = render_command("echo ${HOME} ${index} $HOME {index}", index=7, inputs=None, job_id=1,
                             attempt=1, task="t")

    assert command == "echo ${HOME} ${index} $HOME 7"


def test_render_command_without_inputs_or_workload_dir():
    command = render_command("run {inputs}| {workload_dir}", index=0, inputs=None, job_id=1, attempt=1, task="t")

    assert command == "run | ."


def test_render_command_does_not_substitute_inside_substituted_values():
    command = render_command("cat {inputs}", index=9, inputs=["{index}.txt"], job_id=1, attempt=1, task="t")

    assert command == "cat '{index}.txt'"


def test_rendered_good_workload_commands():
    _, reco = load_workload(DATA / "workload_good.yaml").tasks
    last = list(expand(reco))[-1]
    command = render_command(reco.command, index=last.index, inputs=last.inputs, job_id=17, attempt=2,
                             task=reco.name, workload_dir=reco.workload_dir)

    assert reco.n_jobs == 3
    assert command == "reco f.root --config ${HOME}/reco.cfg --job 17 --try 2"


@pytest.mark.parametrize("text, seconds", [("1:30:00", 5400.0), ("'1:30:00'", 5400.0), ("01:30:00", 5400.0),
                                           ("30:00", 1800.0), ("'30:00'", 1800.0), ("00:30:00", 1800.0)])
def test_unquoted_clock_walltimes_in_yaml_mean_the_same_as_quoted_ones(text, seconds):
    # YAML 1.1 reads 1:30:00 and 30:00 as base-60 integers; the result must still be H:M:S / M:S.
    (task,) = parse_workload(task_yaml("count: 1", f"walltime: {text}")).tasks

    assert task.walltime == seconds


def test_inputs_with_walltimes_go_out_longest_first_and_keep_their_index():
    (task,) = parse_workload(task_yaml(
        "inputs: [{name: a, walltime: 10}, {name: b, walltime: 2m}, {name: c, walltime: 1}, {name: d, walltime: 30}]",
        "files_per_job: 2")).tasks

    # job 0 = a + b (130 s), job 1 = c + d (31 s)
    assert [task.job_walltime(i) for i in range(2)] == [130.0, 31.0]
    assert [(j.index, j.inputs) for j in expand(task)] == [(0, ["a", "b"]), (1, ["c", "d"])]
    (task,) = parse_workload(task_yaml(
        "inputs: [{name: a, walltime: 10}, {name: b, walltime: 2m}, {name: c, walltime: 1}]")).tasks
    assert [(j.index, j.inputs) for j in expand(task)] == [(1, ["b"]), (0, ["a"]), (2, ["c"])]
    # the task's walltime (matched against a worker's time left) is its longest job's, unless given
    assert task.walltime == 120.0


def test_an_explicit_task_walltime_is_kept_with_input_walltimes():
    (task,) = parse_workload(task_yaml("inputs: [{name: a, walltime: 10}]", "walltime: 1h")).tasks

    assert task.walltime == 3600.0


def test_walltimes_on_some_inputs_only_is_an_error_naming_the_task():
    with pytest.raises(WorkloadError, match=r"tasks\.0: give a walltime for every input or for none"):
        parse_workload(task_yaml("inputs: [{name: a, walltime: 10}, b]"))
    with pytest.raises(WorkloadError, match=r"walltime"):
        parse_workload(task_yaml("inputs: [{name: a, walltime: soon}]"))
