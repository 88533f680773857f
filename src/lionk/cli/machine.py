"""Where figures were measured, and how much of the machine other work took meanwhile.

Speed figures (tokens/s, step times) are wall-clock: on a machine that other processes or other
virtual machines share, they measure the contention as much as the code. :class:`OtherLoad` reads
the machine's CPU counters (Linux ``/proc/stat``) at the start and end of an interval and reports
the share of all CPU time in it that went to anything but this process: other processes' busy time
plus the time the hypervisor gave the CPUs to other guests (``steal``). Elsewhere it reports None.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["CONTENDED", "OtherLoad", "PeakRSS", "available_bytes", "contended", "machine", "cpu_name"]

#: Share of the machine's CPU time that other work may take from the CPUs a measurement needs before its speed
#: figures are called contended.
CONTENDED = 0.10

_STAT = Path("/proc/stat")


def _cpu_counters() -> tuple[float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot, or None where /proc/stat is unavailable."""
    try:
        fields = [int(v) for v in _STAT.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


class OtherLoad:
    """Measures, from construction to :meth:`share`, the fraction of the machine's CPU time used by other work."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._ours = time.process_time()
        self._counters = _cpu_counters()

    def share(self) -> float | None:
        """Other work's CPU time over (elapsed wall time x CPUs), in [0, 1]; None where it cannot be measured."""
        end = _cpu_counters()
        wall = time.perf_counter() - self._wall
        if self._counters is None or end is None or wall <= 0:
            return None
        busy = end[0] - self._counters[0]
        steal = end[1] - self._counters[1]
        ours = time.process_time() - self._ours
        return min(max((busy - ours + steal) / (wall * (os.cpu_count() or 1)), 0.0), 1.0)


class PeakRSS:
    """The peak resident memory of this process from construction to :meth:`mb`.

    On Linux the high-water mark (``VmHWM``) is reset at construction (writing 5 to ``/proc/self/clear_refs``), so
    the figure is this interval's own; elsewhere (or where the reset is refused) it is the process's peak since it
    started, and ``per_interval`` is False.
    """

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.per_interval = self._hwm_kb() is not None
        except OSError:
            self.per_interval = False

    @staticmethod
    def _hwm_kb() -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def mb(self) -> float:
        """Peak resident memory in MB (2**20 bytes)."""
        kb = self._hwm_kb() if self.per_interval else None
        if kb is None:
            import resource

            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if platform.system() == "Darwin" else 1)
        return kb / 1024


def contended(other_load: float | None, threads: int) -> bool:
    """Whether other work took more than CONTENDED of the machine's CPU time beyond the CPUs that ``threads``
    threads leave free (False where the load is unknown)."""
    if other_load is None:
        return False
    cpus = os.cpu_count() or 1
    return other_load * cpus > max(cpus - threads, 0) + CONTENDED * cpus


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use on ``device``: free GPU memory, or Linux's MemAvailable; None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }
