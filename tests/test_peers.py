"""lionk.load_peer_state against the real state of each peer that installs here."""

from __future__ import annotations

import pytest
import torch

import lionk
from lionk import Lion, load_peer_state
from lionk.peers import bnb_dynamic_map


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 2)).to(dtype)


def _train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 6, generator=gen, dtype=torch.float64), torch.randn(8, 2, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)), y.to(next(model.parameters()).dtype)).backward()
        opt.step()


def _clone(model):
    copy = _model(next(model.parameters()).dtype)
    copy.load_state_dict(model.state_dict())
    return copy


def test_load_peer_state_is_exported():
    assert lionk.load_peer_state is load_peer_state


@pytest.mark.parametrize("source", ["lion-pytorch", "pytorch_optimizer"])
def test_exp_avg_peers_load_and_continue_identically(source):
    """Train with the peer, load its state into lionk.Lion, and continue both: same float64 trajectory."""
    if source == "lion-pytorch":
        peer_cls = pytest.importorskip("lion_pytorch").Lion
    else:
        peer_cls = pytest.importorskip("pytorch_optimizer").Lion
    lr, wd = 1e-2, 0.5
    peer_model = _model()
    peer = peer_cls(peer_model.parameters(), lr=lr, weight_decay=wd)
    _train(peer_model, peer, 5, seed=1)

    ours_model = _clone(peer_model)
    ours = Lion(ours_model.parameters(), lr=lr, weight_decay=wd)
    load_peer_state(ours, peer.state_dict(), source=source)
    for p, q in zip(ours_model.parameters(), peer_model.parameters()):
        assert torch.equal(ours.state[p]["exp_avg"], peer.state[q]["exp_avg"])

    _train(peer_model, peer, 5, seed=2)
    _train(ours_model, ours, 5, seed=2)
    for p, q in zip(ours_model.parameters(), peer_model.parameters()):
        # both compute p(1 - lr wd) - lr sign(c) in float64; only the order of roundings may differ
        torch.testing.assert_close(p, q, rtol=0, atol=1e-13)


def test_bitsandbytes_lion8bit_state_is_dequantised_as_bitsandbytes_does():
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    big = torch.nn.Parameter(torch.randn(20, 250))  # 5000 values >= min_8bit_size: 8-bit, 20 blocks, the last partial
    small = torch.nn.Parameter(torch.randn(7))  # below min_8bit_size: bitsandbytes keeps float32 state
    try:
        peer = bnb.optim.Lion8bit([big, small], lr=1e-3, weight_decay=0.1)
        for _ in range(3):
            big.grad, small.grad = torch.randn_like(big), torch.randn_like(small)
            peer.step()
    except (RuntimeError, NotImplementedError) as err:  # builds without a CPU backend
        pytest.skip(f"bitsandbytes Lion8bit cannot run on CPU here: {err}")
    sd = peer.state_dict()
    st = peer.state[big]
    assert st["state1"].dtype == torch.uint8 and peer.state[small]["state1"].dtype == torch.float32

    p1, p2 = torch.zeros(20, 250), torch.zeros(7)
    ours = Lion([p1, p2], lr=1e-4)
    load_peer_state(ours, sd, source="bitsandbytes")
    expected = F.dequantize_blockwise(st["state1"], absmax=st["absmax1"], code=st["qmap1"], blocksize=256)
    assert torch.equal(ours.state[p1]["exp_avg"], expected)
    assert torch.equal(ours.state[p2]["exp_avg"], peer.state[small]["state1"])

    # a state whose 256-entry code table was dropped: the rebuilt dynamic map is bitsandbytes' own
    assert torch.equal(bnb_dynamic_map(), F.create_dynamic_map(signed=True))
    entry = sd["state"][0]["__bnb_optimizer_quant_state__"]
    del entry["qmap1"]
    ours2 = Lion([torch.zeros(20, 250), torch.zeros(7)], lr=1e-4)
    load_peer_state(ours2, sd, source="bitsandbytes")
    assert torch.equal(ours2.state[ours2.param_groups[0]["params"][0]]["exp_avg"], expected)


def test_optax_mu_is_mapped_by_parameter_order():
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp
    import numpy as np

    from lionk.optax import lion_k

    # jax flattens dict keys in sorted order: "0_weight", "1_bias", "2_scale" is the torch order below
    params = {"2_scale": jnp.ones(3, jnp.float32), "0_weight": jnp.ones((3, 4), jnp.float32), "1_bias": jnp.zeros(3, jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.linspace(-1.0, 2.0, p.size, dtype=jnp.float32).reshape(p.shape) + p, params)
    torch_params = [torch.zeros(3, 4), torch.zeros(3), torch.zeros(3)]
    for tx in (optax.lion(1e-3), lion_k(1e-3, weight_decay=0.1, mask={"2_scale": False, "0_weight": True, "1_bias": False})):
        state = tx.init(params)
        for _ in range(2):
            _, state = tx.update(grads, state, params)
        mu = state[0].mu
        assert [np.asarray(x).shape for x in jax.tree_util.tree_leaves(mu)] == [(3, 4), (3,), (3,)]
        ours = Lion(torch_params, lr=1e-4)
        load_peer_state(ours, state, source="optax")
        for p, leaf in zip(torch_params, jax.tree_util.tree_leaves(mu)):
            assert leaf.dtype == jnp.float32 and torch.equal(ours.state[p]["exp_avg"], torch.tensor(np.asarray(leaf)))

    state = lion_k(1e-3, mu_dtype=jnp.bfloat16).init(params)
    ours = Lion(torch_params, lr=1e-4)
    load_peer_state(ours, state, source="optax")
    assert ours.state[torch_params[0]]["exp_avg"].dtype == torch.float32


def _lion_pytorch_state(shapes):
    lion_pytorch = pytest.importorskip("lion_pytorch")
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    peer = lion_pytorch.Lion(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    peer.step()
    return peer.state_dict()


def test_count_mismatch_is_a_value_error_and_loads_nothing():
    sd = _lion_pytorch_state([(3,), (4,)])
    p = torch.zeros(3)
    ours = Lion([p], lr=1e-4)
    with pytest.raises(ValueError, match="state has 2 parameters, the optimizer has 1"):
        load_peer_state(ours, sd, source="lion-pytorch")
    assert len(ours.state) == 0


def test_shape_mismatch_is_a_value_error_and_loads_nothing():
    sd = _lion_pytorch_state([(3,), (4,)])
    params = [torch.zeros(3), torch.zeros(2, 2)]
    ours = Lion(params, lr=1e-4)
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(4,\), the parameter has \(2, 2\)"):
        load_peer_state(ours, sd, source="timm")
    assert len(ours.state) == 0


def test_parameters_without_peer_state_get_none():
    lion_pytorch = pytest.importorskip("lion_pytorch")
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
    peer = lion_pytorch.Lion([a, b], lr=1e-3)
    a.grad = torch.randn(3)  # b has no gradient: the peer keeps no state for it
    peer.step()
    pa, pb = torch.zeros(3), torch.zeros(2)
    ours = Lion([pa, pb], lr=1e-4)
    ours.state[pb]["exp_avg"] = torch.ones(2)
    load_peer_state(ours, peer.state_dict(), source="lion-pytorch")
    assert torch.equal(ours.state[pa]["exp_avg"], peer.state[a]["exp_avg"]) and pb not in ours.state


@pytest.mark.parametrize(
    ("source", "state", "match"),
    [
        ("keras", {}, "Invalid source"),
        ("lion-pytorch", {"state": {}}, "needs a torch optimizer state_dict"),
        ("lion-pytorch", {"state": {0: {"exp_avg_sq": torch.zeros(3)}}, "param_groups": [{"params": [0]}]}, "no 'exp_avg'"),
        ("bitsandbytes", {"state": {0: {"step": 1}}, "param_groups": [{"params": [0]}]}, "no 'state1'"),
        (
            "bitsandbytes",
            {"state": {0: {"state1": torch.zeros(3, dtype=torch.uint8), "max1": torch.ones(1)}}, "param_groups": [{"params": [0]}]},
            "block-wise",
        ),
        ("optax", ({"count": 0},), "exactly one 'mu'"),
    ],
)
def test_malformed_state_is_a_value_error(source, state, match):
    ours = Lion([torch.zeros(3)], lr=1e-4)
    with pytest.raises(ValueError, match=match):
        load_peer_state(ours, state, source=source)
