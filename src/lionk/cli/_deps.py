"""The ``cli`` extra's optional dependencies (matplotlib, tqdm), imported where used with a clear error."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require", "pyplot"]


def require(module: str, command: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise ImportError(f"lionk {command} needs {top}: pip install 'lionk[cli]'") from err


def pyplot(command: str) -> ModuleType:
    """matplotlib.pyplot on the non-interactive Agg backend (files only, no display needed)."""
    matplotlib = require("matplotlib", command)
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", command)
