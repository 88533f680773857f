"""lionk.from_adamw, the authors' guidance as data, and lionk.state_bytes."""

import math

import pytest
import torch

import lionk
from lionk.hparams import DEFAULT_FACTOR, FACTOR_RANGE, WORKED_PAIRS


def test_default_factor_keeps_lr_times_wd():
    kw = lionk.from_adamw(1e-3, 0.1)
    assert DEFAULT_FACTOR == 3.0
    assert kw["lr"] == pytest.approx(1e-3 / 3, rel=1e-15)
    assert kw["weight_decay"] == pytest.approx(0.3, rel=1e-15)
    assert kw["lr"] * kw["weight_decay"] == pytest.approx(1e-3 * 0.1, rel=1e-15)
    assert kw["betas"] == (0.9, 0.99)


@pytest.mark.parametrize("factor", [3.0, 5.0, 10.0, 1.0, 0.5])
def test_factor_is_the_lr_divisor_and_wd_multiplier(factor):
    kw = lionk.from_adamw(3e-4, 0.01, factor)
    assert kw["lr"] == pytest.approx(3e-4 / factor, rel=1e-15)
    assert kw["weight_decay"] == pytest.approx(0.01 * factor, rel=1e-15)


def test_result_is_accepted_by_lion():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = lionk.Lion([p], **lionk.from_adamw(1e-3, 0.1, betas=(0.95, 0.98)))
    assert opt.defaults["betas"] == (0.95, 0.98)
    assert opt.defaults["lr"] == pytest.approx(1e-3 / 3)


@pytest.mark.parametrize("pair", WORKED_PAIRS, ids=lambda p: p.task)
def test_worked_pairs_follow_the_rule(pair):
    assert FACTOR_RANGE[0] <= pair.lr_ratio <= FACTOR_RANGE[1]
    assert pair.lr_ratio == pytest.approx(pair.decay_ratio)
    kw = lionk.from_adamw(pair.adamw_lr, pair.adamw_weight_decay, pair.lr_ratio)
    assert kw["lr"] == pytest.approx(pair.lion_lr)
    assert kw["weight_decay"] == pytest.approx(pair.lion_weight_decay)


def test_zero_weight_decay_stays_zero():
    assert lionk.from_adamw(1e-3, 0.0)["weight_decay"] == 0.0


@pytest.mark.parametrize(
    "args, match",
    [
        ((0.0, 0.1), "lr"),
        ((-1e-3, 0.1), "lr"),
        ((math.nan, 0.1), "lr"),
        ((1e-3, -0.1), "weight_decay"),
        ((1e-3, math.inf), "weight_decay"),
        ((1e-3, 0.1, 0.0), "factor"),
        ((1e-3, 0.1, -3.0), "factor"),
        ((True, 0.1), "lr"),
    ],
)
def test_invalid_values_raise(args, match):
    with pytest.raises(ValueError, match=match):
        lionk.from_adamw(*args)


def test_invalid_betas_raise():
    with pytest.raises(ValueError, match="betas"):
        lionk.from_adamw(1e-3, 0.1, betas=(0.9,))


def _step(opt, params):
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()


def test_state_bytes_lion_is_one_buffer_adamw_two():
    shapes = [(64, 32), (32,), (7, 3, 5)]
    n = sum(math.prod(s) for s in shapes)
    ps = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    lion = lionk.Lion(ps, lr=1e-4)
    assert lionk.state_bytes(lion) == 0
    _step(lion, ps)
    assert lionk.state_bytes(lion) == 4 * n + 4 * len(ps)  # the momenta and the float32 step counters
    qs = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    adamw = torch.optim.AdamW(qs, lr=1e-3, foreach=False)
    _step(adamw, qs)
    step_bytes = sum(adamw.state[q]["step"].numel() * adamw.state[q]["step"].element_size() for q in qs)
    assert lionk.state_bytes(adamw) == 8 * n + step_bytes


def test_state_bytes_counts_dtype_and_shared_tensors_once():
    p = torch.nn.Parameter(torch.zeros(10, dtype=torch.bfloat16))
    q = torch.nn.Parameter(torch.zeros(10, dtype=torch.bfloat16))
    opt = lionk.Lion([p, q], lr=1e-4)
    _step(opt, [p, q])
    assert lionk.state_bytes(opt) == 2 * 10 * 2 + 2 * 4  # bfloat16 momenta, float32 step counters
    opt.state[q]["exp_avg"] = opt.state[p]["exp_avg"]
    assert lionk.state_bytes(opt) == 2 * 10 + 2 * 4
