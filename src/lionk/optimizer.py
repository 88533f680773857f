r"""``lionk.Lion``: Lion-K as a ``torch.optim.Optimizer``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .functional import NONFINITE_MODES, fused_unavailable_reason, lion, lion_int8
from .kernels import Kernel, get_kernel, kernel_spec
from .precision import (
    canonical_momentum_dtype,
    check_momentum_dtype,
    convert_momentum,
    has_half_store,
    init_momentum,
    momentum_storage,
    rounding_key,
)

__all__ = ["Lion"]

_FLAG_DEFAULTS: dict[str, Any] = {
    "kernel": "sign",
    "maximize": False,
    "nonfinite": "propagate",
    "foreach": None,
    "fused": None,
    "cautious": False,
    "momentum_dtype": None,
    "stochastic_rounding": True,
}


def _where(index: int | None) -> str:
    return "" if index is None else f" in param group {index}"


def validate_hyperparameters(group: dict[str, Any], index: int | None = None) -> None:
    """Raise ValueError naming the first invalid value of a param group (or of the defaults)."""
    where = _where(index)
    lr = group["lr"]
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element{where}, got shape {tuple(lr.shape)}")
        lr_value = lr.item()
    else:
        lr_value = lr
    if isinstance(lr_value, bool) or not isinstance(lr_value, (int, float)) or not (math.isfinite(lr_value) and lr_value >= 0):
        raise ValueError(f"Invalid learning rate{where}: {lr_value!r} (must be a finite number >= 0)")
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas{where}: {betas!r} (must be a pair (beta1, beta2))")
    for i, beta in enumerate(betas):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}{where}: {beta!r} (must be in [0, 1))")
    wd = group["weight_decay"]
    if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not (math.isfinite(wd) and wd >= 0):
        raise ValueError(f"Invalid weight_decay{where}: {wd!r} (must be a finite number >= 0)")
    if group["nonfinite"] not in NONFINITE_MODES:
        raise ValueError(f"Invalid nonfinite{where}: {group['nonfinite']!r} (must be one of {NONFINITE_MODES})")
    try:
        group["momentum_dtype"] = canonical_momentum_dtype(group["momentum_dtype"])
    except ValueError as err:
        raise ValueError(f"{err}{where}") from None
    for flag in ("maximize", "cautious", "stochastic_rounding"):
        if not isinstance(group[flag], bool):
            raise ValueError(f"Invalid {flag}{where}: {group[flag]!r} (must be True or False)")
    for flag in ("foreach", "fused"):
        if group[flag] not in (None, True, False):
            raise ValueError(f"Invalid {flag}{where}: {group[flag]!r} (must be None, True or False)")
    if group["foreach"] and group["fused"]:
        raise ValueError(f"foreach=True and fused=True cannot be used together{where}")


class Lion(torch.optim.Optimizer):
    r"""Lion (Chen et al., 2023) and its Lion-K family (Chen, Liu, Liang, Liu, 2024).

    For each parameter :math:`x` with gradient :math:`g` and momentum :math:`m` (``state["exp_avg"]``):

    .. math::
        c &= \beta_1 m + (1-\beta_1)\, g \\
        x &\leftarrow x\,(1 - \eta\lambda) - \eta\, \nabla K(c) \\
        m &\leftarrow \beta_2 m + (1-\beta_2)\, g

    With ``kernel="sign"`` (:math:`K = \|\cdot\|_1`, :math:`\nabla K = \mathrm{sign}`, sign(0) = 0) this
    is Program 1 of the Lion paper. Weight decay is decoupled and its per-step strength is
    :math:`\eta\lambda` (``lr * weight_decay``), the paper's convention, as in optax, timm and keras.
    With a decaying lr, Lion-K minimises :math:`f(x) + \frac{1}{\lambda}K^*(\lambda x)`; for sign that
    is :math:`f` under the constraint :math:`\|x\|_\infty \le 1/\lambda`.

    Args:
        params: parameters or param groups (dicts), as for any torch optimizer.
        lr: learning rate :math:`\eta` (a float or a 1-element tensor), >= 0. Lion's is typically 3-10x
            smaller than AdamW's.
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1). The authors suggest (0.95, 0.98) for stability.
        weight_decay: decoupled weight decay :math:`\lambda` >= 0; typically 3-10x AdamW's so that
            ``lr * weight_decay`` is kept.
        kernel: the K of Lion-K: a name from :func:`lionk.kernels.kernel_names` (optionally with
            arguments, e.g. ``"lp(p=1.5)"``) or a :class:`lionk.kernels.Kernel`.
        maximize: maximise the objective instead (the gradient is negated).
        nonfinite: ``"propagate"`` (default): a NaN/inf gradient entry makes its update NaN, as with
            AdamW, instead of being silently zeroed by sign; ``"skip"``: entries whose gradient is not
            finite keep their weight and momentum unchanged for that step.
        cautious: Cautious Lion (Liang, Chen, Liu, Liu 2024): keep only the entries of the update that agree
            in sign with the current gradient, rescaled by ``1 / max(agreeing fraction of the tensor, 1e-3)``;
            decay still applies to every entry. Equal to plain Lion-K when every entry agrees.
        foreach: use the multi-tensor ``torch._foreach_*`` path; ``None`` picks it for CUDA tensors.
        fused: use the fused path (one pass over memory, many tensors per call, elementwise kernels: C on CPU, Triton on CUDA);
            ``None`` picks it wherever it can run (on CUDA only once ``lionk.functional.TRITON_BY_DEFAULT``
            is set), ``True`` raises RuntimeError where it cannot
            (:func:`lionk.fused_unavailable_reason` says why).
        momentum_dtype: storage of the momentum: ``None`` (the parameter's dtype), ``torch.float32``,
            ``torch.bfloat16`` or ``"int8"`` (blockwise codes with one float32 scale per 256 values, for
            tensors of 4096+ elements; see :mod:`lionk.precision`). The arithmetic is float32 (float64 for
            float64 parameters) whatever the storage. Changing it between steps, or loading a checkpoint
            saved with another storage, converts the momentum at the next step.
        stochastic_rounding: round every bfloat16/float16 store (weights, momentum) and the int8 codes
            stochastically, so that steps smaller than half an ulp (Lion's lr-sized steps on bf16 weights,
            the weight decay) survive in expectation; ``False`` rounds to nearest. The random bits are a
            hash of (parameter position, per-parameter step ``state["step"]``, element index): runs are
            bitwise reproducible and resume identically.

    Every argument is per param group. The state per parameter is the momentum ``exp_avg`` (by default
    in the parameter's dtype and layout, so checkpoints of lion-pytorch and timm load and continue
    unchanged), ``exp_avg_absmax`` for int8 momentum, and the step count ``step`` where stochastic
    rounding is used. Complex parameters are updated as pairs of reals. Float16/bfloat16 parameters
    are updated with float32 arithmetic and rounded back to their dtype.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        kernel: str | Kernel = "sign",
        maximize: bool = False,
        nonfinite: str = "propagate",
        foreach: bool | None = None,
        fused: bool | None = None,
        cautious: bool = False,
        momentum_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = True,
    ):
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            weight_decay=weight_decay,
            kernel=kernel,
            maximize=maximize,
            nonfinite=nonfinite,
            foreach=foreach,
            fused=fused,
            cautious=cautious,
            momentum_dtype=momentum_dtype,
            stochastic_rounding=stochastic_rounding,
        )
        validate_hyperparameters(defaults)
        defaults["kernel"] = kernel_spec(kernel)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, validating its hyperparameters and its kernel against its parameters."""
        self._streams = None  # the parameters' positions change
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        try:
            validate_hyperparameters(group, index)
            try:
                group["kernel"] = kernel_spec(group["kernel"])
                kernel = get_kernel(group["kernel"])
                for p in group["params"]:
                    kernel.check_param(p)
                    check_momentum_dtype(group["momentum_dtype"], p)
                if group["fused"]:
                    devices = {p.device for p in group["params"]} or {torch.device("cpu")}
                    for device in devices:
                        reason = fused_unavailable_reason(kernel, device)
                        if reason is not None:
                            raise RuntimeError(f"fused=True cannot run here: {reason}{_where(index)}")
            except ValueError as err:
                raise ValueError(f"{err}{_where(index)}") from None
        except (ValueError, RuntimeError):
            self.param_groups.pop()
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._streams = None
        for group in self.param_groups:
            for flag, default in _FLAG_DEFAULTS.items():
                group.setdefault(flag, default)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, keeping each state tensor's own dtype.

        torch.optim casts floating state to the parameter's dtype on load, which would turn bfloat16
        momenta of float32 parameters into float32 and round float32 int8 scales to a bfloat16
        parameter's precision. Here every tensor keeps the dtype it was saved with (moved to its
        parameter's device). The storage stays this optimizer's choice: each group keeps its
        ``momentum_dtype``, and a momentum saved in another storage is converted at the next step (a
        float32 checkpoint loads into an int8 optimizer, and back).
        """
        saved = {key: dict(value) for key, value in state_dict["state"].items()}
        storages = [group["momentum_dtype"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, storage in zip(self.param_groups, storages):
            group["momentum_dtype"] = storage
        params = [p for group in self.param_groups for p in group["params"]]
        for key, entries in saved.items():
            if not isinstance(key, int) or not 0 <= key < len(params):
                continue
            p = params[key]
            for name, value in entries.items():
                if isinstance(value, Tensor):
                    self.state[p][name] = value.to(device=p.device)

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The group's parameters that have a gradient, their gradients and stored momenta.

        The momentum is created lazily as zeros in the group's ``momentum_dtype`` storage, and converted
        when it is held in another one (a changed group or a loaded checkpoint). For int8 storage the
        third list holds the codes; :meth:`_lion_step` handles them.
        """
        params, grads, exp_avgs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            storage = momentum_storage(group["momentum_dtype"], p)
            if "exp_avg" not in state:
                state.update(init_momentum(p, storage))
            else:
                convert_momentum(state, p, storage)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
        return params, grads, exp_avgs

    @staticmethod
    def _step_kwargs(group: dict[str, Any]) -> dict[str, Any]:
        """The arguments of :func:`lionk.functional.lion` that a param group sets, all but ``lr``."""
        beta1, beta2 = group["betas"]
        keys = ("weight_decay", "kernel", "maximize", "nonfinite", "foreach", "fused", "cautious")
        return dict(beta1=beta1, beta2=beta2, **{k: group[k] for k in keys})

    def _rounding_keys(self, group: dict[str, Any], params: list[Tensor]) -> list | None:
        """Stochastic-rounding keys per tensor (None where nothing rounds), counting ``state["step"]``.

        A parameter's stream is its position in the optimizer (cached until a param group is added).
        """
        if not group["stochastic_rounding"]:
            return None
        keys: list[int | None] = []
        for p in params:
            state = self.state[p]
            m = state["exp_avg"]
            if not (has_half_store(p, m) or m.dtype == torch.int8):
                keys.append(None)
                continue
            if self._streams is None:
                self._streams = {q: i for i, q in enumerate(q for g in self.param_groups for q in g["params"])}
            step = state.get("step", 0)
            state["step"] = step + 1
            keys.append(rounding_key(self._streams[p], step))
        return keys if any(k is not None for k in keys) else None

    def _lion_step(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], lr: float | Tensor, targets: list[Tensor] | None = None
    ) -> None:
        """One Lion-K step of ``params``' state applied to ``targets`` (default: the parameters themselves).

        Momenta stored as int8 codes go through :func:`lionk.functional.lion_int8`.
        """
        targets = params if targets is None else targets
        keys = self._rounding_keys(group, params)
        kwargs = self._step_kwargs(group)
        quantised = [i for i, p in enumerate(params) if self.state[p]["exp_avg"].dtype == torch.int8]
        direct = [i for i, p in enumerate(params) if self.state[p]["exp_avg"].dtype != torch.int8]
        if direct:
            lion(
                [targets[i] for i in direct],
                [grads[i] for i in direct],
                [self.state[params[i]]["exp_avg"] for i in direct],
                lr=lr,
                rounding_keys=None if keys is None else [keys[i] for i in direct],
                **kwargs,
            )
        if quantised:
            states = [self.state[params[i]] for i in quantised]
            lion_int8(
                [targets[i] for i in quantised],
                [grads[i] for i in quantised],
                [state["exp_avg"] for state in states],
                [state["exp_avg_absmax"] for state in states],
                lr=lr,
                rounding_keys=None if keys is None else [keys[i] for i in quantised],
                **kwargs,
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, _ = self._gather(group)
            self._lion_step(group, params, grads, group["lr"])
        return loss
