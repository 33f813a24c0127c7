"""Exceptions of the node side, and the numeric error codes of failed payloads.

Error codes are numbers whose leading part names the owner: 1xxx belong to hpc-edge itself, 2xxx
are left to experiment plugins. Each failed job carries one code and a diagnostic string.
"""

from __future__ import annotations

import enum


class EdgeError(Exception):
    """Base of every hpc_edge error."""


class ProtocolError(EdgeError):
    """A message could not be decoded or validated."""


class PayloadError(EdgeError):
    """A payload could not be started."""


class ErrorCode(enum.IntEnum):
    """Why a job attempt did not finish. 1000-1999: hpc-edge core; 2000-2999: experiment plugins."""

    NONZERO_EXIT = 1001
    KILLED_BY_SIGNAL = 1002
    START_FAILED = 1003
    LOOPING = 1005
    OUTPUT_TOO_LARGE = 1006
    WORKDIR_TOO_LARGE = 1007
    MEMORY_EXCEEDED = 1008
    PAYLOAD_REPORTED = 1009
    OUTPUT_MISSING = 1010
    OUTPUT_EMPTY = 1011
    WALLTIME_EXCEEDED = 1012
    WALLTIME_PREEMPTED = 1020
    KILLED_BY_USER = 1030
    WORKER_STOPPED = 1031
    LOST_WORKER = 1040
    STAGEOUT_FAILED = 1050
    RANGES_FAILED = 1060
    MERGE_FAILED = 1061

    @property
    def is_limit(self) -> bool:
        """A limit the monitor enforced by killing the payload (a failure of the payload)."""
        return self in (ErrorCode.LOOPING, ErrorCode.OUTPUT_TOO_LARGE, ErrorCode.WORKDIR_TOO_LARGE,
                        ErrorCode.MEMORY_EXCEEDED, ErrorCode.WALLTIME_EXCEEDED)

    @property
    def counts_as_attempt(self) -> bool:
        """Whether this failure is the payload's own (it uses up one of max_attempts)."""
        return self not in (ErrorCode.WALLTIME_PREEMPTED, ErrorCode.WORKER_STOPPED, ErrorCode.LOST_WORKER)


PLUGIN_CODE_RANGE = range(2000, 3000)
