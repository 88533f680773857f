"""Cautious Lion: u = u * (u*g > 0) / max(agreeing fraction of the tensor, 1e-3), on every path and kernel."""

from __future__ import annotations

import pytest
import torch

from lionk import Lion
from lionk._paths import cpu_fused
from lionk._paths.foreach import lion_foreach
from lionk._paths.reference import cautious_mask, lion_reference
from lionk.kernels import get_kernel

ELEMENTWISE = ["sign", "power(p=1.5)", "quadratic", "huber(a=0.5)", "relativistic(a=0.5)", "tanh(a=0.5)"]
TENSOR_SCOPE = ["l2", "lp(p=1.5)", "linf", "nuclear(method='svd')"]


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


def _run(path, kernel, dtype):
    gen = torch.Generator().manual_seed(1)
    shapes = [(5, 7), (300, 240), (3, 4)] if "nuclear" in kernel else [(5, 7), (70_001,), (), (0,), (9,)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    exp_avgs = [torch.zeros_like(p) for p in params]
    for _ in range(3):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
        path(params, grads, exp_avgs, lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, kernel=get_kernel(kernel),
             maximize=True, nonfinite="propagate", cautious=True)  # fmt: skip
    return params + exp_avgs


@pytest.mark.parametrize("kernel", ELEMENTWISE + TENSOR_SCOPE)
def test_foreach_bitwise_equals_reference(kernel):
    for a, b in zip(_run(lion_reference, kernel, torch.float64), _run(lion_foreach, kernel, torch.float64)):
        assert torch.equal(a, b)


@pytest.mark.skipif(cpu_fused.unavailable_reason() is not None, reason="fused CPU path unavailable")
@pytest.mark.parametrize("kernel", ELEMENTWISE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_fused_equals_reference(kernel, dtype):
    ref, fused = _run(lion_reference, kernel, dtype), _run(cpu_fused.lion_cpu_fused, kernel, dtype)
    for a, b in zip(ref, fused):
        if kernel in ("sign", "quadratic", "huber(a=0.5)"):
            assert torch.equal(a, b)  # only exactly rounded operations: bitwise
        else:  # libm vs torch transcendental functions: see test_fused.py for the tolerance
            eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
            # the cautious rescaling (about 2x here: half the entries agree) scales that difference too
            torch.testing.assert_close(b, a, rtol=torch.finfo(dtype).eps, atol=1e-2 * 16 * eps * 4)
