r"""Load the momentum of other Lion implementations into a lionk optimizer.

Every Lion keeps one buffer, the momentum :math:`m` of the update
:math:`c = \beta_1 m + (1-\beta_1) g`, :math:`m \leftarrow \beta_2 m + (1-\beta_2) g`; only its name and
storage differ between libraries:

* ``source="lion-pytorch"``, ``"timm"``, ``"pytorch_optimizer"``: ``state_dict`` is the peer optimizer's
  ``state_dict()``; the momentum is ``state[i]["exp_avg"]``, lionk's own layout, copied as is.
* ``source="bitsandbytes"``: a ``state_dict()`` of ``bnb.optim.Lion``, ``Lion8bit`` or ``PagedLion*``; the
  momentum is ``state1`` (float32), or for 8-bit blockwise state the uint8 codes ``state1`` with ``absmax1``
  and ``qmap1``, dequantised (below).
* ``source="optax"``: an optax optimizer state (a pytree, e.g. from ``optax.lion`` or
  :func:`lionk.optax.lion_k`) holding one ``mu``, whose leaves are matched to the parameters by order.

Parameters are matched by position: the saved state's parameters in order (the ids of its
``param_groups``, or the leaves of ``mu`` in jax's flattening order: dict keys sorted, sequences and
named tuples in order) against ``[p for group in optimizer.param_groups for p in group["params"]]``.
A different count or a different shape is a ValueError (nothing is loaded then); shapes are not
transposed (a flax ``Dense`` kernel is ``(in, out)``, a torch ``Linear`` weight ``(out, in)``).

Only the momentum is loaded, converted to each parameter's dtype and device; the hyperparameters stay
those of ``optimizer``, because peers disagree on what weight decay means (docs/migrating-from-adamw.md).

bitsandbytes' 8-bit blockwise state: the parameter's values are cut into blocks of 256 in order (the
last may be shorter): value j is ``qmap1[state1[j]] * absmax1[j // 256]``, where ``qmap1`` is
bitsandbytes' signed dynamic map ``create_dynamic_map(signed=True)`` (stored in the state; rebuilt by
:func:`bnb_dynamic_map` when absent).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["SOURCES", "bnb_dynamic_map", "load_peer_state"]

SOURCES = ("lion-pytorch", "timm", "pytorch_optimizer", "bitsandbytes", "optax")
_EXP_AVG_SOURCES = ("lion-pytorch", "timm", "pytorch_optimizer")
_BNB_WRAPPED = "__bnb_optimizer_quant_state__"  # recent bitsandbytes nest its quantisation tensors under this key
_BNB_BLOCKSIZE = 256  # bitsandbytes' 8-bit blockwise optimizers quantise their state in blocks of 256


def bnb_dynamic_map() -> Tensor:
    """bitsandbytes' ``create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)``: 256 sorted float32 codes.

    Dettmers' dynamic data type: for exponent i = 0..6, 2^i midpoints of ``linspace(0.1, 1, 2^i + 1)`` scaled by
    ``10^(i-6)`` with both signs (254 codes), then 0 and 1, sorted.
    """
    data: list[float] = []
    for i in range(7):
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += (10 ** (i - 6) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()  # float32 products, as bitsandbytes
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


def _dequantize_blockwise(codes: Tensor, absmax: Tensor, qmap: Tensor) -> Tensor:
    n = codes.numel()
    blocks = -(-n // _BNB_BLOCKSIZE)
    if absmax.numel() != blocks:
        raise ValueError(
            f"bitsandbytes state: absmax1 has {absmax.numel()} entries, expected {blocks} for {n} values in blocks of {_BNB_BLOCKSIZE}"
        )
    values = qmap.to(torch.float32)[codes.reshape(-1).long()]
    scale = absmax.to(torch.float32).repeat_interleave(_BNB_BLOCKSIZE)[:n]
    return (values * scale).reshape(codes.shape)


def _bnb_momentum(entry: Mapping[str, Any], where: str) -> Tensor:
    entry = {**entry, **entry.get(_BNB_WRAPPED, {})}
    if "state1" not in entry:
        raise ValueError(f"bitsandbytes state {where} has no 'state1' (keys: {sorted(entry)})")
    state1 = entry["state1"]
    if state1.dtype != torch.uint8:
        return state1
    if "absmax1" not in entry:
        raise ValueError(f"bitsandbytes state {where} is 8-bit without 'absmax1': only block-wise 8-bit state is supported")
    qmap = entry.get("qmap1")
    return _dequantize_blockwise(state1, entry["absmax1"], bnb_dynamic_map() if qmap is None else qmap)


def _torch_momenta(state_dict: Mapping[str, Any], source: str) -> list[Tensor | None]:
    if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError(f"source={source!r} needs a torch optimizer state_dict() with 'state' and 'param_groups'")
    ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    momenta: list[Tensor | None] = []
    for i in ids:
        entry = state_dict["state"].get(i)
        if not entry:
            momenta.append(None)  # the peer never stepped this parameter: no momentum yet
        elif source == "bitsandbytes":
            momenta.append(_bnb_momentum(entry, f"of parameter {i}"))
        elif "exp_avg" in entry:
            momenta.append(entry["exp_avg"])
        else:
            raise ValueError(f"{source} state of parameter {i} has no 'exp_avg' (keys: {sorted(entry)})")
    return momenta


def _find_mu(tree: Any) -> list[Any]:
    """Every ``mu`` in an optax state: fields of named tuples and keys of mappings."""
    if hasattr(tree, "_fields"):
        found = [tree.mu] if "mu" in tree._fields else []
        return found + [m for name in tree._fields if name != "mu" for m in _find_mu(getattr(tree, name))]
    if isinstance(tree, Mapping):
        found = [tree["mu"]] if "mu" in tree else []
        return found + [m for key, value in tree.items() if key != "mu" for m in _find_mu(value)]
    if isinstance(tree, (list, tuple)):
        return [m for item in tree for m in _find_mu(item)]
    return []


def _leaves(tree: Any) -> list[Any]:
    """The leaves of a pytree in jax's order: mappings by sorted key, named tuples and sequences in order."""
    if tree is None:
        return []
    if isinstance(tree, Mapping):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _leaves(item)]
    return [tree]


def _optax_momenta(state: Any) -> list[Tensor | None]:
    import numpy as np  # not a dependency of lionk; present wherever jax is

    found = _find_mu(state)
    if len(found) != 1:
        raise ValueError(f"source='optax' needs an optax state with exactly one 'mu' (a Lion momentum), found {len(found)}")
    momenta: list[Tensor | None] = []
    for leaf in _leaves(found[0]):
        array = np.asarray(leaf)
        if array.dtype not in (np.float16, np.float32, np.float64):
            array = array.astype(np.float32)  # bfloat16 (ml_dtypes) and other types numpy-to-torch cannot share
        momenta.append(torch.from_numpy(np.array(array)))
    return momenta


def load_peer_state(optimizer: torch.optim.Optimizer, state_dict: Any, *, source: str) -> None:
    """Set ``optimizer.state[p]["exp_avg"]`` from another library's Lion state (see the module docstring).

    Args:
        optimizer: a :class:`lionk.Lion` (any optimizer that keeps its momentum in ``exp_avg``).
        state_dict: the peer's saved state: a torch ``state_dict()`` or, for ``source="optax"``, an optax state.
        source: one of ``"lion-pytorch"``, ``"timm"``, ``"pytorch_optimizer"``, ``"bitsandbytes"``, ``"optax"``.

    Raises:
        ValueError: unknown source, a state without a momentum, or a parameter count or shape that differs.
            Nothing is changed then. Parameters the peer has no momentum for get none (as before their first step).
    """
    if source in _EXP_AVG_SOURCES or source == "bitsandbytes":
        momenta = _torch_momenta(state_dict, source)
    elif source == "optax":
        momenta = _optax_momenta(state_dict)
    else:
        raise ValueError(f"Invalid source: {source!r} (must be one of {SOURCES})")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(momenta) != len(params):
        raise ValueError(f"{source} state has {len(momenta)} parameters, the optimizer has {len(params)}")
    for k, (p, m) in enumerate(zip(params, momenta)):
        if m is not None and tuple(m.shape) != tuple(p.shape):
            raise ValueError(f"{source} state of parameter {k} has shape {tuple(m.shape)}, the parameter has {tuple(p.shape)}")
    for p, m in zip(params, momenta):
        if m is None:
            optimizer.state.pop(p, None)
        else:
            optimizer.state[p] = {"exp_avg": torch.empty_like(p, memory_format=torch.preserve_format).copy_(m)}
