"""Keras 3's keras.optimizers.Lion (the TensorFlow route, docs/jax-and-keras.md) follows lionk.Lion's update."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import lionk

os.environ.setdefault("KERAS_BACKEND", "torch")  # no TensorFlow needed; keras' Lion is the same on every backend
keras = pytest.importorskip("keras")


def test_keras_lion_follows_lionk_trajectory_float64():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    target = 2.0 * rng.standard_normal(5)
    x0 = rng.standard_normal(5)
    lr, wd, steps = 0.0625, 0.375, 30  # keras keeps lr and weight_decay in float32 variables: use values exact there

    def grad(x):  # f(x) = sum log cosh(A x) + 1/2 ||x - target||^2
        return a.T @ np.tanh(a @ x) + (x - target)

    x = torch.tensor(x0, requires_grad=True)
    ours = lionk.Lion([x], lr=lr, betas=(0.9, 0.99), weight_decay=wd)
    var = keras.Variable(x0, dtype="float64")
    theirs = keras.optimizers.Lion(learning_rate=lr, beta_1=0.9, beta_2=0.99, weight_decay=wd)
    for t in range(steps):
        x.grad = torch.tensor(grad(x.detach().numpy()))
        ours.step()
        theirs.apply_gradients([(keras.ops.convert_to_tensor(grad(keras.ops.convert_to_numpy(var)), dtype="float64"), var)])
        # keras decays first (x - x wd lr) then steps (- lr sign(c)); lionk rounds x(1 - lr wd) - lr sign(c) at once:
        # equal in exact arithmetic, a few float64 ulps apart per step.
        np.testing.assert_allclose(keras.ops.convert_to_numpy(var), x.detach().numpy(), rtol=0, atol=1e-12, err_msg=f"step {t}")
    assert not np.allclose(x0, x.detach().numpy())
