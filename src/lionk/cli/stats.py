"""Summaries over seeds, for compare and sweep.

For the values x_1..x_n of one setting (one per seed): the mean and the sample standard deviation
sd = sqrt(sum (x_i - mean)^2 / (n - 1)). For a contender and a baseline run on the same seeds: the paired
differences d_i = x_i - b_i (same seed: same initial weights, training and evaluation batches), their mean and its
standard error sd(d) / sqrt(n). With one seed there is no spread: sd and the standard error are None.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["spread", "paired_difference", "plus_minus"]


def _sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (n - 1 in the denominator), None for one value."""
    return statistics.stdev(values) if len(values) > 1 else None


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """{"mean", "sd", "n"} of values (one per seed)."""
    return {"mean": statistics.fmean(values), "sd": _sd(values), "n": len(values)}


def paired_difference(values: Sequence[float], baseline: Sequence[float]) -> dict[str, float | int | None]:
    """{"mean", "se", "n"} of values[i] - baseline[i] (the same seed at each i): the mean difference and its standard error."""
    differences = [v - b for v, b in zip(values, baseline, strict=True)]
    sd = _sd(differences)
    return {"mean": statistics.fmean(differences), "se": None if sd is None else sd / math.sqrt(len(differences)), "n": len(differences)}


def plus_minus(stat: dict, error: str = "sd", spec: str = ".4f") -> str:
    """'mean ± error' (e.g. '1.8994 ± 0.0123'), or the mean alone when there is no error (one seed)."""
    if stat[error] is None:
        return format(stat["mean"], spec)
    return f"{stat['mean']:{spec}} ± {stat[error]:{spec}}"
