"""One conformance checklist over every optimizer x path x storage x dtype x kernel.

In the spirit of torch's OptimizerInfo suite: the cases are generated from what lionk registers (every kernel in
the registry, every momentum storage, every path the dispatcher knows), so a newly registered kernel or storage is
covered without editing a list. ``Softsign`` (conftest.py) is registered the way a user would register a kernel,
to show that a one-class kernel runs on every path.

Truth: the reference path (``fused=False, foreach=False``), itself tested against the formula and the theory in
test_optimizer.py, test_kernels.py and test_theory.py. A path agrees with it bitwise where the kernel's formula is
made of exactly rounded operations (and always for the momentum, which does not depend on the kernel), and
within a stated bound otherwise (:func:`assert_weights_close`).
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import weakref

import pytest
import torch

from _checks import assert_same, assert_weights_close
from lionk import DistributedLion, Lion, LionSF
from lionk.expr import OPS, operations
from lionk.kernels import _REGISTRY, Kernel, get_kernel
from lionk.precision import MOMENTUM_DTYPES

# ---------------------------------------------------------------------------------------------------------------
# the axes of the checklist, read from what lionk registers


def registered_kernels() -> list[Kernel]:
    """One instance per registered kernel class (its default arguments), plus the non-default cases that take
    other code (power's exponents folded to sqrt and identity, match_sign_rms)."""
    kernels = [cls() for cls in _REGISTRY.values()]
    return kernels + [get_kernel(s) for s in ("power(p=1.0)", "power(p=2.0)", "lp(p=1.5, match_sign_rms=True)")]


KERNELS = registered_kernels()
STORAGES = [None if s is None else s for s in MOMENTUM_DTYPES]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
PATHS = {
    "reference": dict(fused=False, foreach=False),
    "foreach": dict(fused=False, foreach=True),
    "fused": dict(fused=True),
}


def _sf_agreement(params, **kw):
    return LionSF(params, mode="agreement", **kw)


def _sf_averaging(params, **kw):
    return LionSF(params, mode="averaging", **kw)


def _distributed(params, **kw):
    _single_rank_group()
    kw.pop("foreach", None), kw.pop("fused", None)  # DistributedLion has one path of its own
    return DistributedLion(params, **kw)


OPTIMIZERS = {"Lion": Lion, "LionSF-agreement": _sf_agreement, "LionSF-averaging": _sf_averaging, "DistributedLion": _distributed}


def _single_rank_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


@pytest.fixture(scope="module", autouse=True)
def _no_process_group_left_behind():
    """DistributedLion's cases run in a one-rank gloo group made here; other modules start without one."""
    import torch.distributed as dist

    had_group = dist.is_initialized()
    yield
    if dist.is_initialized() and not had_group:
        dist.destroy_process_group()


def exact(kernel: Kernel) -> bool:
    """Whether every path rounds the kernel's direction identically: its formula uses exactly rounded operations."""
    return kernel.expression is not None and all(OPS[op].exact for op in operations(kernel.expression))


def fused_runs(kernel: Kernel) -> bool:
    return kernel.elementwise and kernel.expression is not None


def distributed_supports(kernel: Kernel, storage) -> bool:
    return type(kernel).__name__ in ("Sign", "Huber", "Relativistic", "Tanh") and storage != "int8"


# ---------------------------------------------------------------------------------------------------------------
# one scenario: two param groups with the options spread over them, three steps, NaN gradients in the second


SHAPES = [(64, 80), (37,), ()]  # 5120 elements (int8 storage applies), a short vector, a scalar


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in SHAPES for _ in range(2)]


def _groups(params, kernel, storage, options_ok=True, cautious_ok=True):
    """Group 0: independent decay; group 1: maximize, skip mode, cautious and cautious decay (where the optimizer takes
    them; decoupled decay, the default, where it does not). Nuclear needs matrices: its groups hold the 2-d tensors
    and the others run sign."""
    spec = kernel if isinstance(kernel, Kernel) else get_kernel(kernel)
    matrices_only = type(spec).__name__ == "Nuclear"
    groups = []
    for i, chunk in enumerate((params[0::2], params[1::2])):
        group = {"params": chunk, "weight_decay": 0.1 if i == 0 else 0.3, "kernel": spec, "momentum_dtype": storage}
        if matrices_only:
            group["params"] = [p for p in chunk if p.dim() == 2]
            groups.append({"params": [p for p in chunk if p.dim() < 2], "weight_decay": group["weight_decay"], "momentum_dtype": storage})
        if options_ok:
            group.update(weight_decay_mode="independent" if i == 0 else "cautious")
        if i == 1 and options_ok:
            group.update(maximize=True, nonfinite="skip", cautious=cautious_ok)
        groups.append(group)
    return groups


def _grads(params, step, dtype, nonfinite=True):
    g = torch.Generator().manual_seed(100 + step)
    grads = [torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype) for p in params]
    if step == 1 and nonfinite:
        for grad in grads[1::2]:  # group 1 (skip mode) sees NaN and inf entries
            flat = grad.view(-1)
            flat[::5] = float("nan")
            flat[1::7] = float("inf")
    return grads


def run_steps(make, dtype, kernel, storage, path, steps=3, options_ok=True, cautious_ok=True):
    params = _params(dtype)
    opt = make(_groups(params, kernel, storage, options_ok, cautious_ok), lr=1e-2, **path)
    for step in range(steps):
        for p, g in zip(params, _grads(params, step, dtype, nonfinite=options_ok)):
            p.grad = g
        opt.step()
    return params, opt


def _state_of(opt, params):
    return [{k: v.clone() for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)} for p in params]


# ---------------------------------------------------------------------------------------------------------------
# every path against the reference


def _path_cases():
    for name, kernel, storage, dtype, path in itertools.product(OPTIMIZERS, KERNELS, STORAGES, DTYPES, ["foreach", "fused"]):
        if name == "DistributedLion":
            continue  # one path of its own: checked against Lion below
        if path == "foreach" and (dtype in (torch.float16,) or storage == "float32"):
            continue  # foreach is the same torch operations on lists: float32/float64/bfloat16 and the default storage cover it
        yield pytest.param(name, kernel, storage, dtype, path, id=f"{name}-{kernel.spec}-{storage}-{str(dtype)[6:]}-{path}")


@pytest.mark.parametrize("name, kernel, storage, dtype, path", list(_path_cases()))
def test_path_equals_reference(name, kernel, storage, dtype, path):
    make = OPTIMIZERS[name]
    if path == "fused" and not fused_runs(kernel):  # refused when the group is made, or at the step before writing
        params = _params(dtype)
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, _grads(params, 0, dtype)):
            p.grad = g
        with pytest.raises(RuntimeError, match=r"fused=True cannot run"):
            make(_groups(params, kernel, storage), lr=1e-2, fused=True).step()
        assert all(torch.equal(p, b) for p, b in zip(params, before))  # nothing was written
        return
    ref_params, ref = run_steps(make, dtype, kernel, storage, PATHS["reference"])
    params, opt = run_steps(make, dtype, kernel, storage, PATHS[path])
    if path == "fused":
        assert {r.path.split()[0] for r in opt.paths() if r.group != -1} <= {"fused"}
    bitwise = path == "foreach" or exact(kernel)
    for p, q in zip(params, ref_params):
        if bitwise:
            assert_same(p.detach(), q.detach())
        else:
            assert_weights_close(p.detach(), q.detach(), 1e-2, 3)
    for state, ref_state in zip(_state_of(opt, params), _state_of(ref, ref_params)):
        assert state.keys() == ref_state.keys()
        for key in state:
            if key in ("z", "x") and not bitwise:  # schedule-free iterates follow the weights
                assert_weights_close(state[key], ref_state[key], 1e-2, 3)
            else:
                assert_same(state[key], ref_state[key])  # the momentum never depends on the kernel's rounding


def _triton_cases():
    """Every kernel the fused paths run, in float32 and bfloat16; the other storages with sign (the interpreter is slow)."""
    for kernel, dtype, storage in itertools.product([k for k in KERNELS if fused_runs(k)], [torch.float32, torch.bfloat16], STORAGES):
        if storage is None or (kernel.spec == "sign" and storage != "int8"):
            yield pytest.param(kernel, dtype, storage, id=f"{kernel.spec}-{str(dtype)[6:]}-{storage}")


@pytest.mark.parametrize("kernel, dtype, storage", list(_triton_cases()))
def test_triton_path_under_the_interpreter_equals_reference(kernel, dtype, storage, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kw = dict(stochastic_rounding=False)  # the Triton kernel rounds to nearest; stochastic rounding runs on foreach
    ref_params, ref = run_steps(lambda g, **k: Lion(g, **kw, **k), dtype, kernel, storage, PATHS["reference"], steps=2)
    params, opt = run_steps(lambda g, **k: Lion(g, **kw, **k), dtype, kernel, storage, PATHS["fused"], steps=2)
    assert {r.path for r in opt.paths()} == {"fused (triton)"}
    for p, q in zip(params, ref_params):
        if exact(kernel):
            assert_same(p.detach(), q.detach())
        else:
            assert_weights_close(p.detach(), q.detach(), 1e-2, 2)
    for state, ref_state in zip(_state_of(opt, params), _state_of(ref, ref_params)):
        assert_same(state["exp_avg"], ref_state["exp_avg"])


@pytest.mark.parametrize("kernel", [k for k in KERNELS if distributed_supports(k, None)], ids=lambda k: k.spec)
def test_distributed_lion_with_one_rank_is_lion(kernel):
    """One rank votes alone: its vote is its own sign (bounded kernels: an unbiased stochastic sign, so only sign is
    compared step by step; the others run and keep their state layout)."""
    params, opt = run_steps(_distributed, torch.float32, kernel, None, {}, options_ok=False)
    ref_params, ref = run_steps(Lion, torch.float32, kernel, None, PATHS["reference"], options_ok=False)
    if kernel.spec == "sign":
        for p, q in zip(params, ref_params):
            assert_same(p.detach(), q.detach())
    for state, ref_state in zip(_state_of(opt, params), _state_of(ref, ref_params)):
        assert state.keys() == ref_state.keys()
        assert_same(state["exp_avg"], ref_state["exp_avg"])


# ---------------------------------------------------------------------------------------------------------------
# torch.optim's conventions, for every optimizer


def _supported(name, storage=None, kernel="sign"):
    return name != "DistributedLion" or distributed_supports(get_kernel(kernel), storage)


def _make_simple(name, params, **kw):
    return OPTIMIZERS[name](params, lr=1e-2, weight_decay=0.1, **kw)


def _train(opt, params, steps, seed=0, dtype=None):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype or p.dtype)
        opt.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_state_dict_round_trip_and_deepcopy_continue_bitwise(name, storage, dtype):
    if not _supported(name, storage):
        pytest.skip("DistributedLion keeps float momentum")
    params = _params(dtype)
    opt = _make_simple(name, params, momentum_dtype=storage)
    _train(opt, params, 2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded_sd = torch.load(buffer, weights_only=True)
    twin_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    twin = _make_simple(name, twin_params, momentum_dtype=storage)
    twin.load_state_dict(loaded_sd)
    runs = [(opt, params), (twin, twin_params)]
    if name != "DistributedLion":  # its process group does not travel: it pickles as its state only, as torch.optim does
        runs += [tuple(reversed(copy.deepcopy((params, opt)))), tuple(reversed(pickle.loads(pickle.dumps((params, opt)))))]
    for o, ps in runs:
        _train(o, ps, 2, seed=1)
    for _, ps in runs[1:]:
        for p, q in zip(ps, params):
            assert_same(p.detach(), q.detach())
    for p, q in zip(twin_params, params):
        for key, value in opt.state[q].items():
            if isinstance(value, torch.Tensor):
                assert_same(twin.state[p][key], value)
    assert all(isinstance(opt.state[p]["step"], torch.Tensor) and opt.state[p]["step"].item() == 4 for p in params)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("path", PATHS)
def test_steps_with_no_or_partial_gradients(name, path):
    params = _params(torch.float32)
    opt = OPTIMIZERS[name](params, lr=1e-2, weight_decay=0.1, **PATHS[path])
    before = [p.detach().clone() for p in params]
    opt.step()  # no gradients at all: nothing moves, no state
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and len(opt.state) == 0
    for _ in range(2):  # two steps: LionSF's agreement moves nothing at the first (its momentum is 0)
        for p in params[::2]:
            p.grad = torch.ones_like(p)
        opt.step()
    for i, (p, b) in enumerate(zip(params, before)):
        assert torch.equal(p, b) == (i % 2 == 1)
        assert ("exp_avg" in opt.state[p]) == (i % 2 == 0)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("path", PATHS)
def test_a_step_keeps_no_gradient_alive(name, path):
    """After step() the optimizer holds no reference to the gradients it used: zero_grad(set_to_none=True) frees them
    (a cache that kept them would hold a second whole gradient through the next forward and backward)."""
    params = _params(torch.float32)
    opt = OPTIMIZERS[name](params, lr=1e-2, weight_decay=0.1, **PATHS[path])
    for step in range(2):  # the first step builds the cached plan, the second reuses it
        for p, grad in zip(params, _grads(params, step, torch.float32, nonfinite=False)):
            p.grad = grad
        del grad
        grads = [weakref.ref(p.grad) for p in params]
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert all(ref() is None for ref in grads)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)], ids=str)
def test_tensor_lr_of_every_shape_torch_accepts(name, path, shape):
    results = []
    for lr in (1e-2, torch.full(shape, 1e-2, dtype=torch.float64)):
        params = _params(torch.float32)
        opt = OPTIMIZERS[name](params, lr=lr, weight_decay=0.1, **PATHS[path])
        _train(opt, params, 2)
        results.append(params)
    for p, q in zip(*results):
        assert_same(p.detach(), q.detach())


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "DistributedLion"])
@pytest.mark.parametrize("path", PATHS)
def test_complex_parameters_are_pairs_of_reals(name, path):
    g = torch.Generator().manual_seed(3)
    z = torch.nn.Parameter(torch.randn(40, 30, dtype=torch.complex64, generator=g))
    r = torch.nn.Parameter(torch.view_as_real(z.detach().clone()).clone())
    opt_z = OPTIMIZERS[name]([z], lr=1e-2, weight_decay=0.1, **PATHS[path])
    opt_r = OPTIMIZERS[name]([r], lr=1e-2, weight_decay=0.1, **PATHS[path])
    for _ in range(3):
        grad = torch.randn(40, 30, dtype=torch.complex64, generator=g)
        z.grad, r.grad = grad, torch.view_as_real(grad).clone()
        opt_z.step()
        opt_r.step()
    assert_same(torch.view_as_real(z.detach()), r.detach())
    assert_same(torch.view_as_real(opt_z.state[z]["exp_avg"]), opt_r.state[r]["exp_avg"])


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("path", PATHS)
def test_maximize_is_the_negated_gradient(name, path):
    results = []
    for maximize in (True, False):
        params = _params(torch.float32)
        opt = OPTIMIZERS[name](params, lr=1e-2, weight_decay=0.1, maximize=maximize, **PATHS[path])
        g = torch.Generator().manual_seed(5)
        for _ in range(3):
            for p in params:
                grad = torch.randn(p.shape, generator=g)
                p.grad = grad if maximize else -grad
            opt.step()
        results.append(params)
    for p, q in zip(*results):
        assert_same(p.detach(), q.detach())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_hooks_run_around_the_step(name):
    params = _params(torch.float32)
    opt = _make_simple(name, params)
    _train(opt, params, 1)  # LionSF's agreement moves nothing at the first step
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", float(params[0].detach().view(-1)[0]))))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", float(params[0].detach().view(-1)[0]))))
    _train(opt, params, 1)
    assert [c[0] for c in calls] == ["pre", "post"] and calls[0][1] != calls[1][1]


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("fused", [None, True])
def test_deferred_initialisation_on_meta(name, fused):
    """Build on the meta device, construct the optimizer, then materialise the module (swapping the parameters' data in
    place, torch's pattern for models too large to build twice) and train; fused=True is checked on the real tensors."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with torch.device("meta"):
            model = torch.nn.Linear(64, 80)
        opt = OPTIMIZERS[name](model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
        model.to_empty(device="cpu")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    torch.nn.init.normal_(model.weight)
    torch.nn.init.zeros_(model.bias)
    before = model.weight.detach().clone()
    for _ in range(2):  # LionSF's agreement moves nothing at the first step
        opt.zero_grad()
        model(torch.randn(8, 64)).square().mean().backward()
        opt.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_paths_table_names_every_parameter(name):
    params = _params(torch.float32)
    opt = _make_simple(name, params)
    report = opt.paths()
    assert len(report) == len(params) and all(r.path for r in report)
    text = str(report)
    assert text.splitlines()[0].split()[:3] == ["group", "parameter", "shape"] and len(text.splitlines()) == len(params) + 1


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_works_inside_a_compiled_training_step(name):
    """torch.compile traces the whole training step, optimizer included (the reference operations are traced; what
    cannot be, such as DistributedLion's collectives, breaks the graph and runs eagerly)."""
    torch.manual_seed(10)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    twin = copy.deepcopy(model)
    opt, opt_twin = _make_simple(name, model.parameters()), _make_simple(name, twin.parameters())
    xs = [torch.randn(16, 8) for _ in range(4)]

    def train_step(m, o, x):
        o.zero_grad()
        loss = m(x).square().mean()
        loss.backward()
        o.step()
        return loss

    compiled = torch.compile(train_step)
    for x in xs:
        compiled(model, opt, x)
        train_step(twin, opt_twin, x)
    for a, b in zip(model.parameters(), twin.parameters()):
        # the compiled forward/backward may round differently, but no weight's sign step may differ
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_softsign_runs_fused_and_matches_its_formula():
    """The README's example: a kernel declared as one class runs on the fused CPU path."""
    p = torch.nn.Parameter(torch.zeros(5000))
    opt = Lion([p], lr=1.0, betas=(0.0, 0.0), kernel="softsign", fused=True)
    p.grad = torch.linspace(-3, 3, 5000)
    opt.step()
    assert opt.paths()[0].path.startswith("fused (native")
    c = torch.linspace(-3, 3, 5000)
    assert torch.equal(p.detach(), -(c / (1 + c.abs())))
