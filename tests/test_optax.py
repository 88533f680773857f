"""lionk.optax: the same trajectories as lionk.Lion in float64, and optax.lion itself for the sign kernel."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

import lionk
from lionk.kernels import get_kernel


def test_import_without_jax_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # makes `import jax` raise ImportError
    monkeypatch.delitem(sys.modules, "lionk.optax", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'lionk\[jax\]'"):
        importlib.import_module("lionk.optax")


try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError:
    jax = None
requires_jax = pytest.mark.skipif(jax is None, reason="needs jax and optax: pip install 'lionk[jax]'")
if jax is not None:
    jax.config.update("jax_enable_x64", True)
    from lionk.optax import jax_direction, lion_k

KERNELS = [
    "sign",
    "power(p=1.5)",
    "quadratic",
    "huber(a=0.5)",
    "relativistic(a=0.5)",
    "tanh(a=0.5)",
    "lp(p=1.5)",
    "l2",
    "lp(p=2.0, match_sign_rms=True)",
    "linf",
]

# A smooth non-quadratic problem over a pytree {"w": (3, 4), "b": (4,)}:
# f(x) = sum_ij log cosh(A_ij . x) + 1/2 ||x - a||^2 with x = (w, b) flattened, fixed random A and a.
N = 16
_rng = np.random.default_rng(0)
A = _rng.standard_normal((6, N))
TARGET = 2.0 * _rng.standard_normal(N)
START = {"w": _rng.standard_normal((3, 4)), "b": _rng.standard_normal(4)}


def _flat_torch(w, b):
    return torch.cat([w.reshape(-1), b.reshape(-1)])


def _loss_torch(w, b):
    x = _flat_torch(w, b)
    z = torch.as_tensor(A) @ x
    return torch.log(torch.cosh(z)).sum() + 0.5 * (x - torch.as_tensor(TARGET)).square().sum()


def _loss_jax(params):
    x = jnp.concatenate([params["w"].reshape(-1), params["b"].reshape(-1)])
    z = jnp.asarray(A) @ x
    return jnp.log(jnp.cosh(z)).sum() + 0.5 * jnp.sum((x - jnp.asarray(TARGET)) ** 2)


def _torch_trajectory(kernel, lrs, wd, decay_bias=True):
    w = torch.tensor(START["w"], requires_grad=True)
    b = torch.tensor(START["b"], requires_grad=True)
    opt = lionk.Lion(
        [{"params": [w]}, {"params": [b], "weight_decay": wd if decay_bias else 0.0}], lr=lrs[0], weight_decay=wd, kernel=kernel
    )
    out = []
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        _loss_torch(w, b).backward()
        opt.step()
        out.append((w.detach().numpy().copy(), b.detach().numpy().copy()))
    return out


def _optax_trajectory(tx, steps):
    params = jax.tree.map(jnp.asarray, START)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(_loss_jax)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append((np.asarray(params["w"]), np.asarray(params["b"])))
    return out, state


def _assert_same(torch_traj, jax_traj):
    # The two libraries evaluate x(1 - lr wd) - lr u and x - lr (u + wd x): equal in exact arithmetic,
    # a few ulps apart per step in float64. 1e-12 is ~1e4 ulps of the O(1) iterates after 40 steps.
    for t, ((tw, tb), (jw, jb)) in enumerate(zip(torch_traj, jax_traj)):
        assert jw.dtype == np.float64
        np.testing.assert_allclose(jw, tw, rtol=0, atol=1e-12, err_msg=f"w at step {t}")
        np.testing.assert_allclose(jb, tb, rtol=0, atol=1e-12, err_msg=f"b at step {t}")


@requires_jax
@pytest.mark.parametrize("kernel", KERNELS)
def test_trajectory_matches_torch_lion_float64(kernel):
    steps, lr, wd = 40, 0.05, 0.3
    torch_traj = _torch_trajectory(kernel, [lr] * steps, wd)
    jax_traj, _ = _optax_trajectory(lion_k(lr, weight_decay=wd, kernel=kernel), steps)
    _assert_same(torch_traj, jax_traj)
    assert not np.allclose(jax_traj[-1][0], START["w"])  # the iterate moved


@requires_jax
def test_schedule_and_mask_match_torch_lion():
    steps, wd = 40, 0.3
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, warmup_steps=5, decay_steps=steps, end_value=0.01)
    # optax calls the schedule inside the jitted step with its int32 count 0, 1, ...; its schedules then return
    # float32 (and XLA may round differently from eager jax), so give torch the values of the jitted schedule.
    lrs = [float(jax.jit(schedule)(jnp.int32(t))) for t in range(steps)]
    torch_traj = _torch_trajectory("power(p=1.5)", lrs, wd, decay_bias=False)
    tx = lion_k(schedule, weight_decay=wd, kernel="power(p=1.5)", mask={"w": True, "b": False})
    jax_traj, _ = _optax_trajectory(tx, steps)
    _assert_same(torch_traj, jax_traj)


@requires_jax
def test_sign_kernel_is_optax_lion_exactly():
    steps, lr, wd = 30, 0.05, 0.3
    ours, _ = _optax_trajectory(lion_k(lr, weight_decay=wd), steps)
    theirs, _ = _optax_trajectory(optax.lion(lr, weight_decay=wd), steps)
    for (ow, ob), (tw, tb) in zip(ours, theirs):
        np.testing.assert_array_equal(ow, tw)
        np.testing.assert_array_equal(ob, tb)


@requires_jax
@pytest.mark.parametrize("kernel", KERNELS)
def test_jax_direction_equals_kernel_direction(kernel):
    rng = np.random.default_rng(1)
    for c in (rng.standard_normal((5, 7)) * 3, np.array([0.0, -0.0, 1e-300, -2.0, 2.0]), np.zeros(4), np.zeros((0, 3))):
        expected = get_kernel(kernel).direction(torch.as_tensor(c)).numpy()
        got = np.asarray(jax_direction(kernel)(jnp.asarray(c)))
        np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)


@requires_jax
@pytest.mark.parametrize("kernel", ["nuclear", "nuclear(method='svd')"])
def test_unsupported_kernel_is_a_value_error(kernel):
    with pytest.raises(ValueError, match=r"not supported by lionk\.optax"):
        lion_k(1e-3, kernel=kernel)


@requires_jax
def test_invalid_spec_is_a_value_error():
    with pytest.raises(ValueError, match="Unknown kernel"):
        lion_k(1e-3, kernel="nope")


@requires_jax
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b1": 1.0}, r"beta parameter at index 0: 1.0 \(must be in \[0, 1\)\)"),
        ({"b2": -0.1}, "beta parameter at index 1"),
        ({"learning_rate": -1e-3}, "Invalid learning rate"),
        ({"weight_decay": -0.1}, "Invalid weight_decay"),
    ],
)
def test_invalid_hyperparameters_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lion_k(**{"learning_rate": 1e-3, **kwargs})


@requires_jax
def test_mu_dtype_stores_momentum_in_that_dtype():
    _, state = _optax_trajectory(lion_k(0.05, mu_dtype=jnp.bfloat16), 3)
    mu = state[0].mu
    assert mu["w"].dtype == jnp.bfloat16 and mu["b"].dtype == jnp.bfloat16


@requires_jax
def test_hyperparameters_may_be_jax_arrays_and_inject_hyperparams_works():
    """optax.inject_hyperparams passes jnp arrays (traced under jit): they are taken as they are, like optax.lion's."""
    steps, lr, wd = 10, 0.05, 0.3
    torch_traj = _torch_trajectory("sign", [lr] * steps, wd)
    injected = optax.inject_hyperparams(lion_k)(learning_rate=lr, weight_decay=wd)
    jax_traj, state = _optax_trajectory(injected, steps)
    _assert_same(torch_traj, jax_traj)
    assert float(state.hyperparams["learning_rate"]) == lr
    arrays, _ = _optax_trajectory(lion_k(jnp.asarray(lr), b1=jnp.asarray(0.9), weight_decay=jnp.asarray(wd)), steps)
    _assert_same(torch_traj, arrays)
    with pytest.raises(ValueError, match="Invalid weight_decay"):
        lion_k(lr, weight_decay=jnp.asarray(-1.0))  # a concrete array is still range-checked


@requires_jax
@pytest.mark.parametrize("kernel", ["sign", "l2"])
def test_complex_leaves_are_pairs_of_reals_as_in_lionk_lion(kernel):
    rng = np.random.default_rng(1)
    z0 = rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) + 1j * rng.standard_normal((3, 4)) for _ in range(5)]
    p = torch.nn.Parameter(torch.tensor(z0))
    opt = lionk.Lion([p], lr=0.1, weight_decay=0.2, kernel=kernel)
    tx = lion_k(0.1, weight_decay=0.2, kernel=kernel)
    params = {"z": jnp.asarray(z0)}
    state = tx.init(params)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        updates, state = tx.update({"z": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params["z"]), p.detach().numpy(), rtol=0, atol=1e-12)


@requires_jax
def test_a_users_kernel_runs_in_jax_from_its_formula():
    """Softsign (tests/conftest.py) has no jax code of its own: its formula runs with jax.numpy."""
    c = np.linspace(-3, 3, 13)
    np.testing.assert_array_equal(np.asarray(jax_direction("softsign")(jnp.asarray(c))), c / (1 + np.abs(c)))
