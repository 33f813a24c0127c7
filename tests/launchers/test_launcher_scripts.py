"""Rendered batch scripts: golden files, walltime and count formatting, strict site templates.

Golden files live in tests/launchers/golden/; run with HPC_EDGE_UPDATE_GOLDEN=1 to rewrite them after
an intended template change (and read the diff before committing it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from launchers import LauncherError, format_walltime, get_launcher
from launchers.render import format_hours_minutes

from launcher_testkit import GOLDEN, golden_spec

CASES = {
    "slurm-srun": ("slurm", {}, {}),
    "slurm-mpiexec": ("slurm", {}, {"mpi_launch": "mpiexec", "qos": "normal", "gpus_per_node": 0}),
    "pbs-openpbs": ("pbs", {"flavor": "openpbs"}, {}),
    "pbs-torque": ("pbs", {"flavor": "torque"}, {}),
    "lsf": ("lsf", {}, {}),
}


def render(case: str) -> str:
    system, options, changes = CASES[case]
    return get_launcher(system, **options).render_script(golden_spec(**changes))


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_script_matches_golden_file(case):
    text = render(case)
    golden = GOLDEN / f"{case}.sh"
    if os.environ.get("HPC_EDGE_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"missing {golden}; create it with HPC_EDGE_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{case} script differs from {golden} (HPC_EDGE_UPDATE_GOLDEN=1 rewrites)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_script_is_valid_shell(case):
    shell = "sh" if case == "lsf" else "bash"
    proc = subprocess.run([shutil.which(shell), "-n"], input=render(case), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def launch_line(script: str) -> list[str]:
    """The words of the line that starts the MPI launcher."""
    for line in script.splitlines():
        if line.startswith("exec ") or line.endswith(" &"):
            return shlex.split(line.removeprefix("exec ").removesuffix(" &"))
    raise AssertionError("no launch line in script")


def test_srun_launch_takes_ranks_from_the_allocation_and_quotes_the_command():
    script = render("slurm-srun")
    spec = golden_spec()
    assert launch_line(script) == ["srun", "--mpi=pmi2", *spec.command]
    assert "#SBATCH --ntasks=8\n" in script and "#SBATCH --nodes=2\n" in script
    assert "#SBATCH --ntasks-per-node=4\n" in script and "#SBATCH --cpus-per-task=2\n" in script
    assert "export SRUN_CPUS_PER_TASK=2\n" in script


def test_mpiexec_launch_gets_the_rank_count():
    for case in ("slurm-mpiexec", "pbs-openpbs", "pbs-torque", "lsf"):
        assert launch_line(render(case)) == ["mpiexec", "-n", "8", *golden_spec().command], case


def test_warning_signal_goes_to_steps_with_srun_and_to_the_batch_shell_otherwise():
    srun = render("slurm-srun")
    mpiexec = render("slurm-mpiexec")
    assert "#SBATCH --signal=USR1@90\n" in srun and "--signal=B:" not in srun
    assert "#SBATCH --signal=B:USR1@90\n" in mpiexec
    assert "trap 'kill -s USR1 \"$launcher_pid\" 2>/dev/null' USR1" in mpiexec
    lsf = render("lsf")
    assert "#BSUB -wa USR1\n#BSUB -wt 2\n" in lsf  # 90 s rounds up to 2 minutes
    assert "signal" not in render("pbs-openpbs").split("# hpc-edge worker")[0]  # no PBS directive for it


def test_no_warning_signal_when_asked_for_none():
    script = get_launcher("slurm").render_script(golden_spec(warning_signal_s=0))
    assert "--signal" not in script
    assert "#BSUB -wa" not in get_launcher("lsf").render_script(golden_spec(warning_signal_s=0))


def test_env_values_are_shell_quoted():
    script = render("slurm-srun")
    assert "export EDGE_MSG='hello $USER; bye'\n" in script
    assert "export OMP_NUM_THREADS=2\n" in script


def test_script_changes_to_workdir_before_exporting_and_launching():
    script = render("pbs-torque")
    cd = script.index("cd /scratch/edge/w-000042 ||")
    assert cd < script.index("export OMP_NUM_THREADS") < script.index("module load python/3.11")
    assert script.index("module load python/3.11") < script.index("mpiexec -n 8")


@pytest.mark.parametrize("seconds, expected", [(5400, "01:30:00"), (90061, "25:01:01"), (59, "00:00:59"),
                                               (86400, "24:00:00")])
def test_format_walltime(seconds, expected):
    assert format_walltime(seconds) == expected


@pytest.mark.parametrize("seconds", [0, -5])
def test_format_walltime_rejects_non_positive(seconds):
    with pytest.raises(ValueError, match="walltime must be positive"):
        format_walltime(seconds)


def test_walltime_in_every_system_is_formatted_in_python():
    spec = golden_spec(walltime_s=90 * 60)
    assert "#SBATCH --time=01:30:00\n" in get_launcher("slurm").render_script(spec)
    assert "#PBS -l walltime=01:30:00\n" in get_launcher("pbs").render_script(spec)
    assert "#BSUB -W 1:30\n" in get_launcher("lsf").render_script(spec)
    assert "#SBATCH --time=25:01:01\n" in get_launcher("slurm").render_script(golden_spec(walltime_s=90061))


def test_lsf_walltime_rounds_partial_minutes_up():
    assert format_hours_minutes(5400) == "1:30"
    assert format_hours_minutes(5401) == "1:31"
    assert format_hours_minutes(30) == "0:01"
    with pytest.raises(ValueError):
        format_hours_minutes(0)


def test_zero_walltime_is_an_error_at_render_time():
    with pytest.raises(LauncherError, match="walltime_s must be >= 1"):
        get_launcher("slurm").render_script(golden_spec(walltime_s=0))


def test_counts_are_integers_in_the_script():
    script = get_launcher("slurm").render_script(golden_spec(nodes=2.0, ranks_per_node=4.0))
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --ntasks=8\n" in script
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert not [line for line in directives if ".0" in line], directives
    pbs = get_launcher("pbs").render_script(golden_spec(nodes=2.0))
    assert "#PBS -l select=2:ncpus=8:mpiprocs=4:ngpus=1\n" in pbs


@pytest.mark.parametrize("field, value, message", [
    ("nodes", 2.5, "nodes must be a whole number"),
    ("nodes", 0, "nodes must be >= 1"),
    ("ranks_per_node", "4", "ranks_per_node must be an integer"),
    ("cores_per_rank", True, "cores_per_rank must be an integer"),
    ("gpus_per_node", -1, "gpus_per_node must be >= 0"),
])
def test_bad_counts_are_clear_errors(field, value, message):
    with pytest.raises(LauncherError, match=message):
        get_launcher("slurm").render_script(golden_spec(**{field: value}))


def test_bad_env_name_and_directive_values_are_errors():
    with pytest.raises(LauncherError, match="not a valid shell identifier"):
        get_launcher("slurm").render_script(golden_spec(env={"BAD-NAME": "x"}))
    with pytest.raises(LauncherError, match="contains whitespace"):
        get_launcher("slurm").render_script(golden_spec(account="my project"))
    with pytest.raises(LauncherError, match="empty command"):
        get_launcher("slurm").render_script(golden_spec(command=[]))


def test_pbs_and_lsf_refuse_a_qos_they_cannot_express():
    for name in ("pbs", "lsf"):
        with pytest.raises(LauncherError, match="no QOS directive"):
            get_launcher(name).render_script(golden_spec(qos="high"))


def test_site_defaults_fill_what_the_spec_leaves_empty():
    launcher = get_launcher("slurm", account="site-acct", partition="batch", setup_lines=["module load site"],
                            env={"SITE": "1", "OMP_NUM_THREADS": "1"}, mpi_launch="srun --mpi=pmix")
    script = launcher.render_script(golden_spec(account=None, partition=None))
    assert "#SBATCH --account=site-acct\n" in script and "#SBATCH --partition=batch\n" in script
    assert script.index("module load site") < script.index("module load python/3.11")
    assert "export SITE=1\n" in script and "export OMP_NUM_THREADS=2\n" in script  # the spec wins
    assert launch_line(script)[:2] == ["srun", "--mpi=pmix"]
    assert "#SBATCH --account=proj42\n" in launcher.render_script(golden_spec())


def test_site_template_directory_overrides_the_package_template(tmp_path):
    (tmp_path / "slurm.sh.j2").write_text(
        "#!/bin/bash\n#SBATCH --nodes={{ nodes }}\n#SBATCH --constraint=haswell\n{% include '_body.sh.j2' %}"
    )
    script = get_launcher("slurm", template_dir=tmp_path).render_script(golden_spec())
    assert script.startswith("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --constraint=haswell\n")
    assert launch_line(script) == ["srun", "--mpi=pmi2", *golden_spec().command]
    # the other systems still use the package's templates
    assert "#PBS -N edge-w-000042" in get_launcher("pbs", template_dir=tmp_path).render_script(golden_spec())


def test_site_template_with_an_unknown_variable_is_a_clear_error(tmp_path):
    (tmp_path / "slurm.sh.j2").write_text("#!/bin/bash\n#SBATCH --reservation={{ reservation }}\n")
    with pytest.raises(LauncherError) as caught:
        get_launcher("slurm", template_dir=tmp_path).render_script(golden_spec())
    message = str(caught.value)
    assert "'reservation' is undefined" in message
    assert str(tmp_path / "slurm.sh.j2") in message
    assert "walltime" in message  # lists what is available


def test_missing_site_directory_and_broken_template_are_clear_errors(tmp_path):
    with pytest.raises(LauncherError, match="does not exist"):
        get_launcher("slurm", template_dir=tmp_path / "nope").render_script(golden_spec())
    (tmp_path / "lsf.sh.j2").write_text("{% if %}\n")
    with pytest.raises(LauncherError, match=r"syntax error in template .*lsf\.sh\.j2:1"):
        get_launcher("lsf", template_dir=tmp_path).render_script(golden_spec())


def test_rendering_does_not_modify_the_callers_spec():
    spec = golden_spec()
    before = replace(spec)
    get_launcher("slurm", setup_lines=["x"], env={"A": "1"}).render_script(spec)
    assert spec == before


def test_launchers_do_no_io_in_their_constructor(tmp_path):
    # A missing site directory is only noticed when a script is rendered.
    for name in ("slurm", "pbs", "lsf"):
        get_launcher(name, template_dir=tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_shipped_templates_are_package_data():
    templates = Path(__import__("launchers").__file__).parent / "templates"
    assert {"slurm.sh.j2", "pbs.sh.j2", "lsf.sh.j2", "_body.sh.j2"} <= {p.name for p in templates.glob("*.j2")}
