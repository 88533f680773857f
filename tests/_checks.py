"""Comparisons the path tests share: bitwise equality, and the stated bound for kernels whose formula calls
transcendental functions."""

from __future__ import annotations

import math

import torch


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bitwise equal (NaN where the other is NaN)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(torch.isnan(a), torch.isnan(b))


def ulp(t: torch.Tensor) -> torch.Tensor:
    """The spacing of t's dtype at each value of t (in float64)."""
    return (torch.nextafter(t, torch.full_like(t, math.inf)).double() - t.double()).abs()


def assert_weights_close(a: torch.Tensor, b: torch.Tensor, lr: float, steps: int, max_direction: float = 4.0) -> None:
    """Weights after ``steps`` steps of a kernel with transcendental operations, on two paths.

    Each step's direction may differ by a few ulp of the opmath dtype (libm's functions against torch's vectorised
    ones), which moves the weight by at most lr * 8 eps(opmath); rounding the new weight to its dtype may then land
    one ulp of that dtype apart, at the magnitude the weight had then: at most |w| + steps * lr * max|direction|.
    Per element: steps * (lr * 8 eps(opmath) + ulp(max(|a|, |b|) + steps * lr * max_direction)).
    """
    opmath_eps = torch.finfo(torch.float64 if a.dtype == torch.float64 else torch.float32).eps
    reach = torch.maximum(a.double().abs(), b.double().abs()).nan_to_num() + steps * lr * max_direction
    bound = steps * (lr * 8 * opmath_eps + ulp(reach.to(a.dtype)))
    diff = (a.double() - b.double()).abs()
    both_nan = torch.isnan(a) & torch.isnan(b)
    assert bool(((diff <= bound) | both_nan).all()), f"max difference {diff[~both_nan].max().item():.3g} over the bound"
