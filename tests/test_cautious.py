"""Cautious Lion: u = u * (u*g > 0) / max(agreeing fraction of the tensor, 1e-3) (every path and kernel against the
reference: test_conformance.py and test_native.py)."""

from __future__ import annotations

import pytest
import torch

from lionk import Lion
from lionk._engine.update import cautious_mask


def test_mask_semantics_on_hand_made_tensors():
    u = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 1.0, -1.0, 1.0])
    g = torch.tensor([2.0, -3.0, -1.0, 4.0, 1.0, 0.0, -0.5, 1e-30])
    # agreeing: indices 0, 1, 6, 7 -> 4 of 8 -> fraction 0.5, kept entries doubled
    expected = torch.tensor([2.0, -2.0, 0.0, 0.0, 0.0, 0.0, -2.0, 2.0])
    assert torch.equal(cautious_mask(u, g), expected)


def test_mask_floor_when_nothing_agrees():
    u = torch.ones(5000)
    g = -torch.ones(5000)
    g[0] = 1.0  # 1 of 5000 agrees: fraction 2e-4 is floored at 1e-3
    out = cautious_mask(u, g)
    assert out[0].item() == pytest.approx(1000.0) and torch.count_nonzero(out) == 1


def test_equal_to_plain_lion_when_every_entry_agrees():
    """First step from zero momentum: c = (1-b1) g, so sign(c) = sign(g) everywhere (g has no zeros)."""
    torch.manual_seed(0)
    x = torch.randn(6, 7, dtype=torch.float64)
    g = torch.randn(6, 7, dtype=torch.float64)
    a, b = torch.nn.Parameter(x.clone()), torch.nn.Parameter(x.clone())
    opt_a = Lion([a], lr=0.01, weight_decay=0.3, cautious=True)
    opt_b = Lion([b], lr=0.01, weight_decay=0.3)
    a.grad, b.grad = g.clone(), g.clone()
    opt_a.step()
    opt_b.step()
    assert torch.equal(a, b)


def test_cautious_step_by_hand():
    lr, wd = 0.1, 0.5
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = Lion([p], lr=lr, betas=(0.9, 0.99), weight_decay=wd, cautious=True)
    opt.state[p]["exp_avg"] = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    p.grad = torch.tensor([-0.5, 2.0, -0.1, 3.0], dtype=torch.float64)
    opt.step()
    # c = 0.9 m + 0.1 g = [0.85, 1.1, -0.91, -0.6]; u = sign(c) = [1, 1, -1, -1]; u*g > 0 at 1 and 2 -> fraction 1/2
    torch.testing.assert_close(p.detach(), torch.tensor([0.0, -0.2, 0.2, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)
