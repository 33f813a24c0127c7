"""hpc-edge, node side: the MPI job's relay and ranks, the payload runner, and the wire protocol
shared with the control tower. Nothing here imports ``control_tower``: nodes run without it."""

from .errors import EdgeError, ErrorCode, PayloadError, ProtocolError
from .protocol import VERSION, JobEvent, JobSpec, RankInfo, decode, encode

__version__ = "0.1.0"

__all__ = ["EdgeError", "ErrorCode", "JobEvent", "JobSpec", "PayloadError", "ProtocolError",
           "RankInfo", "VERSION", "decode", "encode", "__version__"]
