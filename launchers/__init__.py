"""Batch-system adapters: slurm, pbs, lsf, and local (mpiexec, no batch system).

One registry picks an adapter by its short name. This package imports neither ``hpc_edge`` nor
``control_tower``.
"""

from __future__ import annotations

from importlib import import_module

from .base import (
    BatchState,
    CancelError,
    CommandError,
    Launcher,
    LauncherError,
    ScriptLauncher,
    StatusError,
    SubmitError,
    WorkerSpec,
    format_walltime,
    run_command,
)

_REGISTRY = {
    "local": ("launchers.local", "LocalLauncher"),
    "slurm": ("launchers.slurm", "SlurmLauncher"),
    "pbs": ("launchers.pbs", "PBSLauncher"),
    "lsf": ("launchers.lsf", "LSFLauncher"),
}

NAMES = tuple(_REGISTRY)


def get_launcher(name: str, **options) -> Launcher:
    """A launcher by short name (``slurm|pbs|lsf|local``)."""
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise LauncherError(f"unknown launcher {name!r}; choose one of {', '.join(NAMES)}") from None
    return getattr(import_module(module_name), class_name)(**options)


__all__ = [
    "BatchState", "CancelError", "CommandError", "Launcher", "LauncherError", "NAMES",
    "ScriptLauncher", "StatusError", "SubmitError", "WorkerSpec", "format_walltime",
    "get_launcher", "run_command",
]
