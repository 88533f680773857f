"""lionk: the Lion-K optimizer family for PyTorch."""

from . import kernels
from .diagnostics import diagnostics, format_diagnostics
from .distributed import DistributedLion
from .functional import fused_unavailable_reason, lion
from .hparams import from_adamw
from .kernels import Huber, Kernel, LInf, LpNorm, Nuclear, Power, Quadratic, Relativistic, Sign, Tanh, get_kernel
from .memory import state_bytes
from .optimizer import Lion, PathReport
from .peers import load_peer_state
from .schedule_free import LionSF

__version__ = "0.1.0"

__all__ = [
    "load_peer_state",
    "Lion",
    "PathReport",
    "lion",
    "fused_unavailable_reason",
    "kernels",
    "Kernel",
    "get_kernel",
    "Sign",
    "LpNorm",
    "Power",
    "Quadratic",
    "Huber",
    "Relativistic",
    "Tanh",
    "LInf",
    "Nuclear",
    "from_adamw",
    "state_bytes",
    "LionSF",
    "DistributedLion",
    "diagnostics",
    "format_diagnostics",
]
