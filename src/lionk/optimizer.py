r"""``lionk.Lion``: Lion-K as a ``torch.optim.Optimizer``."""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from . import _engine
from ._engine import Hyper, Slot, check_group, check_param, check_slot, fused_unavailable_reason, group_hyper, where
from ._engine.update import clip_per_tensor
from ._engine.work import DEFAULTS
from ._tensor import as_real, is_dtensor
from .kernels import Kernel, get_kernel
from .precision import HALF_TYPES, Int8Storage, check_momentum_dtype, convert_momentum, held_storage, rounding_key, storage_for

__all__ = ["Lion", "PathReport"]


#: Param-group keys of other optimizers: a state dict that has them is not a Lion's (see load_state_dict).
_FOREIGN_GROUP_KEYS = frozenset(
    "eps amsgrad momentum dampening nesterov lr_decay initial_accumulator_value alpha centered rho capturable differentiable "
    "weight_decouple fixed_decay decoupled_weight_decay use_triton lambd t0 etas step_sizes max_iter history_size line_search_fn "
    "decouple rectify".split()
)


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
        foreach: use the multi-tensor ``torch._foreach_*`` path for what does not run fused; ``None`` picks it
            for CUDA tensors.
        fused: use the fused path (one pass over memory, many tensors per call, elementwise kernels: the
            native library on CPU, Triton on CUDA); ``None`` picks it wherever it can run (on CUDA once
            ``lionk._engine.dispatch.TRITON_BY_DEFAULT`` is set), ``True`` raises RuntimeError, before anything is
            written, for any tensor that cannot take it. :meth:`paths` shows each tensor's path and why.
        momentum_dtype: storage of the momentum: ``None`` (the parameter's dtype), ``torch.float32``,
            ``torch.bfloat16`` or ``"int8"`` (blockwise codes with one float32 scale per 256 values, for
            tensors of 4096+ elements; see :mod:`lionk.precision`). The arithmetic is float32 (float64 for
            float64 parameters) whatever the storage. Changing it between steps, or loading a checkpoint
            saved with another storage, converts the momentum at the next step.
        weight_decay_mode: what the decay does per step (Lion-K's view of each in the README):
            ``"decoupled"`` (default): :math:`x \leftarrow x(1-\eta\lambda)`, the paper's Program 1;
            ``"independent"``: :math:`x \leftarrow x(1-\lambda\eta/\eta_0)` with :math:`\eta_0` the group's
            ``initial_lr`` (what torch's lr schedulers set; else the lr when the group was made), the convention
            of lion-pytorch's ``decoupled_weight_decay=True`` and optimi, so their settings copy unchanged;
            ``"cautious"`` (Cautious Weight Decay): decay only the entries where the update and the weight have the
            same sign, i.e. where decay pulls the same way as the optimizer's own step.
        max_grad_norm: clip each tensor's gradient to this L2 norm before the step (``g * min(1, max_norm / (||g|| +
            1e-6))``, per tensor, in place); ``None`` (default) does not clip. Unlike
            ``torch.nn.utils.clip_grad_norm_`` it needs no other tensor's gradient, so it works with gradient release.
        gradient_release: step each parameter inside ``loss.backward()`` as soon as its gradient is accumulated and
            free that gradient at once, so that gradients never exist for the whole model (optimizer-wide; see the
            README's "Gradient release" for how it meets accumulation, schedulers, GradScaler, clipping and many
            machines). ``step()`` then only runs the closure (and steps gradients left by :meth:`accumulate`).
        release_bucket: under gradient release, parameters whose gradients are ready are stepped together once they
            hold this many elements (default 65,536), and all that remain when backward ends: larger buckets mean
            fewer calls, smaller ones fewer live gradients.
        stochastic_rounding: round every bfloat16/float16 store (weights, momentum) and the int8 codes
            stochastically, so that steps smaller than half an ulp (Lion's lr-sized steps on bf16 weights,
            the weight decay) survive in expectation; ``False`` rounds to nearest. The random bits are a
            hash of (parameter position, per-parameter step ``state["step"]``, element index): runs are
            bitwise reproducible and resume identically.

    Every argument is per param group. The state per parameter is the momentum ``exp_avg`` (by default
    in the parameter's dtype and layout, so checkpoints of lion-pytorch and timm load and continue
    unchanged), ``exp_avg_absmax`` for int8 momentum, and the step count ``step`` (a float32 0-d tensor, as in
    torch.optim). Complex parameters are updated as pairs of reals. Float16/bfloat16 parameters
    are updated with float32 arithmetic and rounded back to their dtype.

    A step checks every group's settings, every gradient and every state entry against its parameter before
    it writes anything, so a step that raises leaves every parameter and momentum as it was. An interrupt
    (KeyboardInterrupt) during a step can leave it half applied (some tensors stepped, others not): reload a
    checkpoint rather than continue from it.
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
        weight_decay_mode: str = "decoupled",
        max_grad_norm: float | None = None,
        gradient_release: bool = False,
        release_bucket: int = 1 << 16,
    ):
        self._init_release(gradient_release, release_bucket)
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
            weight_decay_mode=weight_decay_mode,
            max_grad_norm=max_grad_norm,
        )
        check_group(defaults)
        super().__init__(params, defaults)

    #: State entries this optimizer keeps (a loaded state dict with others comes from another optimizer).
    _state_keys: frozenset[str] = frozenset({"exp_avg", "exp_avg_absmax", "step"})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, validating its settings and its kernel and storage against its parameters."""
        self._streams = None  # the parameters' positions change
        self._groups_of: dict[Tensor, int] | None = None
        self._warned: set[int] = getattr(self, "_warned", set())
        self._plans: dict[Any, _GroupPlan] = {}
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        index = len(self.param_groups) - 1
        try:
            check_group(group, index)
            lr = group["lr"]  # the lr weight_decay_mode="independent" divides by, unless a scheduler set another
            group.setdefault("initial_lr", lr.detach().clone() if isinstance(lr, Tensor) else lr)
            kernel = get_kernel(group["kernel"])
            for p in group["params"]:
                check_param(p, f"a parameter{where(index)}")
                try:
                    kernel.check_param(p)
                    check_momentum_dtype(group["momentum_dtype"], p)
                except ValueError as err:
                    raise ValueError(f"{err}{where(index)}") from None
            if group["fused"]:  # what can be told without gradients; the rest is checked at each step
                for device in {p.device for p in group["params"] if p.device.type != "meta"}:
                    reason = fused_unavailable_reason(kernel, device)
                    if reason is not None:
                        raise RuntimeError(f"fused=True cannot run here: {reason}{where(index)}")
            self._check_group_extra(group, index)
            if self.gradient_release:
                self._register_release(group, index)
        except (ValueError, TypeError, RuntimeError):
            self.param_groups.pop()
            raise

    def _check_group_extra(self, group: dict[str, Any], index: int) -> None:
        """What a subclass checks in a new param group beyond Lion's settings (before hooks are registered)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._streams = None
        self._groups_of = None
        self._plans = {}
        self._warned = set()
        self._init_release(False, 0)  # a copy has no hooks on its parameters
        for group in self.param_groups:
            for flag, default in DEFAULTS.items():
                group.setdefault(flag, default)

    # ---- checkpoints -------------------------------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict, after checking all of it against this optimizer.

        Refused with a ValueError, before anything changes: a state dict of another optimizer (AdamW's ``exp_avg_sq``,
        SGD's ``momentum_buffer``, their ``eps`` or ``nesterov``: use :func:`lionk.load_peer_state` for another
        library's Lion), invalid settings (a beta of 1.5, a negative lr, ``maximize='yes'``), and state that does
        not fit its parameter (a momentum of another shape, int8 codes without their scales).

        torch.optim casts floating state to the parameter's dtype on load, which would turn bfloat16
        momenta of float32 parameters into float32 and round float32 int8 scales to a bfloat16
        parameter's precision. Here every tensor keeps the dtype it was saved with (moved to its
        parameter's device). The storage stays this optimizer's choice: each group keeps its
        ``momentum_dtype``, and a momentum saved in another storage is converted at the next step (a
        float32 checkpoint loads into an int8 optimizer, and back). Checkpoints of lionk 0.1 (no ``step``, or
        a Python int ``step``) load with a tensor ``step``.
        """
        self._check_loadable(state_dict)
        self._plans = {}
        saved = {key: dict(value) for key, value in state_dict["state"].items()}
        storages = [group["momentum_dtype"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, storage in zip(self.param_groups, storages):
            group["momentum_dtype"] = storage
        params = self._params()
        positions = {key: i for i, key in enumerate(key for group in state_dict["param_groups"] for key in group["params"])}
        for key, entries in saved.items():
            p = params[positions[key]]
            state = self.state[p]
            for name, value in entries.items():
                if isinstance(value, Tensor):
                    state[name] = value.to(device=p.device)
            if isinstance(state.get("exp_avg"), Tensor) and state["exp_avg"].dtype == torch.int8:
                state["exp_avg"] = state["exp_avg"].contiguous()  # blocks follow row-major order
            state["step"] = _step_tensor(state.get("step", 0))

    def _check_loadable(self, state_dict: Any) -> None:
        """Raise ValueError naming what in ``state_dict`` does not fit this optimizer (see :meth:`load_state_dict`)."""
        hint = "use lionk.load_peer_state(optimizer, state_dict, source=...) to take another library's Lion momentum"
        if (
            not isinstance(state_dict, Mapping)
            or not isinstance(state_dict.get("state"), Mapping)
            or not isinstance(state_dict.get("param_groups"), (list, tuple))
        ):
            raise ValueError(
                "a state dict is a mapping with 'state' (a mapping) and 'param_groups' (a list), as optimizer.state_dict() gives"
            )
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(groups)} param groups, this optimizer {len(self.param_groups)}")
        for index, (saved, group) in enumerate(zip(groups, self.param_groups)):
            foreign = sorted(set(saved) & _FOREIGN_GROUP_KEYS - set(group))
            if foreign or "betas" not in saved:
                what = f"has {foreign}" if foreign else "has no 'betas'"
                raise ValueError(f"this state dict is not a Lion's: its param group {index} {what}; {hint}")
            if len(saved.get("params", ())) != len(group["params"]):
                raise ValueError(
                    f"loaded param group {index} has {len(saved.get('params', ()))} parameters, this optimizer's {len(group['params'])}"
                )
            merged = {**{k: v for k, v in group.items() if k != "params"}, **{k: v for k, v in saved.items() if k != "params"}}
            try:
                check_group(merged)
            except (ValueError, TypeError) as err:
                raise type(err)(f"{err} in loaded param group {index}") from None
        params = self._params()
        positions = {key: i for i, key in enumerate(key for saved in groups for key in saved["params"])}
        for key, entry in state_dict["state"].items():
            if key not in positions:
                raise ValueError(f"the state dict has state for parameter {key!r}, which none of its param groups lists")
            label = f"loaded state of parameter {key}"
            unknown = sorted(set(entry) - self._state_keys)
            if unknown:
                raise ValueError(f"this state dict is not a {type(self).__name__}'s: {label} has {unknown}; {hint}")
            if "exp_avg" not in entry:
                continue
            storage = held_storage(entry)
            if storage is None:
                raise ValueError(f"{label}: 'exp_avg' is {type(entry['exp_avg']).__name__}, not a tensor")
            p = params[positions[key]]
            loaded = {k: v.to(p.device) if isinstance(v, Tensor) else v for k, v in entry.items()}
            if isinstance(storage, Int8Storage):
                loaded["exp_avg"] = loaded["exp_avg"].contiguous()  # as load_state_dict will store it
            problem = storage.problem(loaded, p)
            if problem is not None:
                raise ValueError(f"{label}: {problem}")

    # ---- one step --------------------------------------------------------------------------------------------

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _positions(self) -> dict[Tensor, int]:
        """Each parameter's position in the optimizer (its stochastic-rounding stream; cached until a group is added)."""
        if self._streams is None:
            self._streams = {p: i for i, p in enumerate(self._params())}
        return self._streams

    def _slots(self, group: dict[str, Any], index: int, params: list[Tensor]) -> list[Slot]:
        """The group's ``params`` that have a gradient, as checked :class:`lionk._engine.Slot` objects.

        A parameter's momentum is created lazily as zeros in the group's ``momentum_dtype`` storage; one held in
        another storage (a changed group, a loaded checkpoint) is checked in the storage it is held in now and
        converted by :meth:`_convert` once the whole step has been checked.
        """
        positions = self._positions()
        slots = []
        for p in params:
            if p.grad is None:
                continue
            label = f"parameter {positions[p]} (param group {index}, shape {tuple(p.shape)})"
            state = self.state[p]
            target = storage_for(group["momentum_dtype"], p)
            if "exp_avg" not in state:
                state.update(target.init(p))
            if not isinstance(state.get("step"), Tensor):
                state["step"] = _step_tensor(state.get("step", 0))
            held = held_storage(state)
            if held is None:
                raise ValueError(f"{label}: state['exp_avg'] is {type(state['exp_avg']).__name__}, not a tensor")
            slot = Slot(p, self._weight(group, p, state), p.grad, state, held, label, extra={"target": target})
            check_slot(slot, type(self).__name__)
            slots.append(slot)
        return slots

    def _weight(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Tensor:
        """The tensor a step writes for parameter ``p`` (the parameter itself; LionSF's averaging steps its z)."""
        return p

    @staticmethod
    def _convert(slots: list[Slot]) -> None:
        """Move each momentum to the storage its group asks for (a changed group, a loaded checkpoint)."""
        for s in slots:
            target = s.extra["target"]
            if target != s.storage:
                convert_momentum(s.state, s.param, target)
                s.storage = target

    def _draw_keys(self, slots: list[Slot]) -> None:
        """This step's stochastic-rounding key of each slot: its stream (position) and its step."""
        positions = self._positions()
        for s in slots:
            s.key = rounding_key(positions[s.param], int(s.state["step"]))

    #: Group settings that decide a group's plan (its paths and checks); the lr does not: it is read at every run.
    _plan_settings: tuple[str, ...] = ("betas", "weight_decay", *DEFAULTS)

    def _prepare(self, selection: dict[int, list[Tensor]] | None = None) -> list[Work]:
        """Every group's settings and slots, all checked, and each group's plan (fused=True raises here, before
        anything is written); then the rounding keys of this step. ``selection``: the parameters to consider per
        group index (gradient release steps a few at a time); by default every parameter of every group.

        A group's plan is kept while its parameters with gradients, their gradients' and parameters' dtypes, shapes,
        strides and devices, their state tensors and the group's settings stay the same, so that a training loop pays
        the checks and the path choice once; anything else rebuilds it (and checks everything again).
        """
        context = _engine.dispatch.plan_context()
        work = []
        for index, group in enumerate(self.param_groups):
            if selection is not None and index not in selection:
                continue
            params = group["params"] if selection is None else selection[index]
            hyper = group_hyper(group, index)
            key = (tuple(group.get(k) for k in self._plan_settings), context)
            plan_id = index if selection is None else (index, *map(id, params))
            cached = self._plans.get(plan_id)
            if cached is None or cached.key != key or not self._still_fits(params, cached):
                slots = self._slots(group, index, params)
                cached = self._plans[plan_id] = _GroupPlan(key, slots, [self._fingerprint(s) for s in slots], None, [])
            work.append(Work(group, hyper, cached.slots, cached))
        for item in work:  # every group is checked before any momentum is converted or any plan made
            if item.cache.plan is None:
                self._convert(item.slots)
                rounds = item.group["stochastic_rounding"]
                item.cache.rounding = [s for s in item.slots if rounds and (s.weight.dtype in HALF_TYPES or s.storage.rounds)]
                self._draw_keys(item.cache.rounding)  # the paths see which tensors round
                item.cache.fingerprints = [self._fingerprint(s) for s in item.slots]
                item.cache.plan = _engine.dispatch.plan(item.slots, item.hyper)
        for item in work:
            self._draw_keys(item.cache.rounding)
        return work

    def _still_fits(self, params: list[Tensor], cached: _GroupPlan) -> bool:
        """Whether the cached slots are still these tensors as they were checked (refreshing their gradients)."""
        slots, fingerprints = cached.slots, cached.fingerprints
        i = 0
        for p in params:
            g = p.grad
            if g is None:
                continue
            if i >= len(slots) or slots[i].param is not p:
                return False
            slots[i].grad = g
            if self._fingerprint(slots[i]) != fingerprints[i]:
                return False
            i += 1
        return i == len(slots)

    @staticmethod
    def _fingerprint(s: Slot) -> tuple:
        """What a slot's checks and path depend on: the gradient's and the parameter's dtype, shape (torch keeps a
        gradient's shape the parameter's), strides and device, and which tensors hold its state."""
        g, p, state = s.grad, s.param, s.state
        if g.layout != torch.strided:
            return (g.layout,)
        return (g.dtype, g.shape, g.stride(), g.device, p.dtype, p.stride(), p.device, id(state.get("exp_avg")),
                id(state.get("exp_avg_absmax")), id(s.weight))  # fmt: skip

    @staticmethod
    def _count_steps(slots: list[Slot]) -> None:
        if slots:
            torch._foreach_add_([s.state["step"] for s in slots], 1.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss.

        With ``gradient_release=True`` the parameters were stepped during ``backward()``: ``step()`` runs the
        closure, then steps whatever gradients are still there (those accumulated under :meth:`accumulate`) and frees
        them.
        """
        return self._step(closure)

    def _step(self, closure: Callable[[], Any] | None) -> Any:
        """:meth:`step`'s work (subclasses' ``step`` call this: torch wraps each class's ``step`` with the optimizer
        hooks, and calling the wrapped parent would run them twice)."""
        if self.gradient_release and hasattr(self, "found_inf"):
            raise RuntimeError(
                "gradient_release=True cannot be used with torch.amp.GradScaler: the scaler skips a step when any gradient "
                "is inf, which is known only after the whole backward, while gradient release steps each parameter during "
                "it (with scaled gradients). Use bfloat16 autocast, which needs no scaler, or release=False"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._prepare()
        self._step_work(work)
        if self.gradient_release:
            for item in work:
                for s in item.slots:
                    s.param.grad = None
        return loss

    def _step_work(self, work: list[Work]) -> None:
        """One step of checked and planned work (subclasses change the rates or the tensors around it)."""
        self._warn_lost_steps(work)
        self._run(work)

    #: How often (in a group's steps) to look again for lost steps; the look reads every weight once.
    LOST_STEP_INTERVAL = 1000

    def _warn_lost_steps(self, work: list[Work]) -> None:
        """Warn once per group when round to nearest loses the steps of most of its bfloat16/float16 weights.

        A weight w rounded to nearest keeps its old value when the step is below half its ulp; with Lion's step of
        lr (|grad K| <= 1 for sign and the bounded kernels) plus the decay lr * k * |w|, that happens where
        lr * (1 + k |w|) < ulp(w) / 2. Looked at on a group's first step and every :attr:`LOST_STEP_INTERVAL` steps.
        """
        for item in work:
            group, slots = item.group, item.slots
            if group["stochastic_rounding"] or id(group) in self._warned or not slots:
                continue
            half = [s.weight for s in slots if s.weight.dtype in HALF_TYPES]
            if not half or int(slots[0].state["step"]) % self.LOST_STEP_INTERVAL:
                continue
            lr = item.hyper.lr_value * slots[0].lr_scale
            if lr <= 0:
                continue
            lost = total = 0
            for w in half:
                w32 = as_real(w).detach().float()
                ulp = torch.nextafter(as_real(w).detach(), torch.full_like(as_real(w), torch.inf)).float() - w32
                lost += int(torch.count_nonzero(lr * (1 + item.hyper.weight_decay * w32.abs()) < ulp / 2))
                total += w32.numel()
            if total and lost / total > 0.5:
                self._warned.add(id(group))
                index = self.param_groups.index(group)
                warnings.warn(
                    f"lionk: {lost / total:.0%} of the {half[0].dtype} weights in param group {index} lose their steps: a step of "
                    f"lr = {lr:.3g} is below half an ulp of those weights, and stochastic_rounding=False rounds it away (the "
                    "weight keeps its old value). Use stochastic_rounding=True (the default), float32 weights, or a larger lr.",
                    stacklevel=4,
                )

    def _run(self, work: list[Work]) -> None:
        """Run every group's plan with its settings of this step, then count the step."""
        try:
            for item in work:
                max_norm = item.group["max_grad_norm"]
                if max_norm is not None:
                    clip_per_tensor([s.grad for s in item.slots], max_norm)
                item.cache.plan.run(item.hyper)
                self._count_steps(item.slots)
        finally:  # also when a path raised
            self._forget_gradients(work)

    @staticmethod
    def _forget_gradients(work: list[Work]) -> None:
        """Drop the cached slots' references to this step's gradients (the next step refreshes them): the plan cache
        must not keep a whole gradient alive after the step, through ``zero_grad(set_to_none=True)`` or gradient
        release's freeing."""
        for item in work:
            for s in item.slots:
                s.grad = None

    # ---- gradient release ----------------------------------------------------------------------------------------

    def _init_release(self, gradient_release: bool, release_bucket: int) -> None:
        """Gradient release's settings and pending list (before any param group is added)."""
        if not isinstance(gradient_release, bool):
            raise ValueError(f"Invalid gradient_release: {gradient_release!r} (must be True or False)")
        if isinstance(release_bucket, bool) or not isinstance(release_bucket, int) or release_bucket < 0:
            raise ValueError(f"Invalid release_bucket: {release_bucket!r} (must be an integer >= 0, a number of elements)")
        self.gradient_release = gradient_release
        self.release_bucket = release_bucket
        self._pending: list[Tensor] = []
        self._pending_numel = 0
        self._accumulating = False
        if gradient_release:
            _refuse_release_across_processes(ValueError)
            self._step_supports_amp_scaling = True  # so that GradScaler tells step(), which refuses it (see step)

    def _register_release(self, group: dict[str, Any], index: int) -> None:
        """Step each of the group's parameters from inside backward as soon as its gradient is accumulated."""
        for p in group["params"]:
            if is_dtensor(p):
                raise ValueError(
                    f"gradient_release=True needs plain tensors{where(index)}: FSDP2 sets a DTensor's gradient after its "
                    "reduce-scatter, outside autograd, so no hook would ever step it"
                )
        ref = weakref.ref(self)
        for p in group["params"]:
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(functools.partial(_gradient_ready, ref))

    def _release(self, p: Tensor) -> None:
        if self._accumulating:
            return
        if not self._pending:  # the first of this backward; the rest is stepped when this backward ends
            _refuse_release_across_processes(RuntimeError)  # a process group may have been made after the optimizer
            torch.autograd.Variable._execution_engine.queue_callback(self._flush_released)
        self._pending.append(p)
        self._pending_numel += p.numel()
        if self._pending_numel >= self.release_bucket:
            self._flush_released()

    @torch.no_grad()
    def _flush_released(self) -> None:
        """Step the pending parameters (one batch through the usual paths) and free their gradients."""
        params, self._pending, self._pending_numel = self._pending, [], 0
        if not params:
            return
        if self._groups_of is None:
            self._groups_of = {p: i for i, group in enumerate(self.param_groups) for p in group["params"]}
        selection: dict[int, list[Tensor]] = {}
        for p in params:
            selection.setdefault(self._groups_of[p], []).append(p)
        self._step_work(self._prepare(selection))
        for p in params:
            p.grad = None

    @contextlib.contextmanager
    def accumulate(self) -> Iterator[None]:
        """Gradient release over micro-batches: backward passes inside this context accumulate gradients as usual;
        the first backward outside it steps each parameter with the accumulated gradient (and frees it)::

            for x in micro_batches[:-1]:
                with opt.accumulate():
                    loss_fn(model(x)).backward()
            loss_fn(model(micro_batches[-1])).backward()   # steps

        (While accumulating, the gradients exist for the whole model, as without gradient release.)
        """
        previous, self._accumulating = self._accumulating, True
        try:
            yield
        finally:
            self._accumulating = previous

    # ---- which path runs --------------------------------------------------------------------------------------

    def paths(self, names: Iterable[tuple[str, Tensor]] | None = None) -> PathReport:
        """Which path each parameter's step takes and why not a faster one, as a table (``print(opt.paths())``).

        ``names``: e.g. ``model.named_parameters()``, to label the rows. A parameter without a gradient or state
        yet is shown as its first step would run it (a gradient like the parameter, a fresh momentum).
        """
        labels = {id(p): n for n, p in names} if names is not None else {}
        positions = self._positions()
        rows = []
        for index, group in enumerate(self.param_groups):
            hyper = group_hyper(group, index)
            for p in group["params"]:
                state = self.state.get(p, {})
                storage = storage_for(group["momentum_dtype"], p)
                if held_storage(state) != storage:  # as the next step will hold it
                    state = {k: v for k, v in storage.init(p.to("meta")).items()}
                slot = Slot(p, p, p.grad if p.grad is not None else p, state, storage, "")
                if group["stochastic_rounding"] and (p.dtype in HALF_TYPES or storage.rounds):
                    slot.key = 0
                choice = _engine.choose(slot, hyper)
                path = choice.path if not choice.detail else f"{choice.path} ({choice.detail})"
                name = labels.get(id(p), f"p{positions[p]}")
                rows.append(PathRow(index, name, tuple(p.shape), str(p.dtype).removeprefix("torch."), storage.name, path, choice.why))
        return PathReport(rows)


@dataclass(eq=False)
class _GroupPlan:
    """A group's checked slots and prepared paths, kept while ``key`` and the slots' fingerprints hold."""

    key: tuple
    slots: list[Slot]
    fingerprints: list[tuple]
    plan: _engine.dispatch.Plan | None
    rounding: list[Slot]  # the slots that round stochastically (their keys are drawn at every step)


class Work(NamedTuple):
    """One group's part of a step: its settings, its slots and its plan (``cache``)."""

    group: dict[str, Any]
    hyper: Hyper
    slots: list[Slot]
    cache: _GroupPlan


def _refuse_release_across_processes(error: type[Exception]) -> None:
    """Raise ``error`` when torch.distributed runs more than one process: gradient release steps each parameter on
    its local gradient inside backward, before DDP's all-reduce could average it, so replicas would diverge."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        raise error(
            f"gradient_release=True with {world} processes: each parameter would be stepped on this process's own gradient "
            "inside backward, before DDP averages it, and the replicas would diverge. Use gradient release in "
            "single-process training; across processes use DDP without it, FSDP2, or lionk.DistributedLion"
        )


def _gradient_ready(optimizer: weakref.ref, p: Tensor) -> None:
    """A parameter's post-accumulate-grad hook under gradient release (a weak reference: the hook keeps no optimizer alive)."""
    opt = optimizer()
    if opt is not None:
        opt._release(p)


def _step_tensor(step: Any) -> Tensor:
    """A parameter's step count as torch.optim keeps it: a float32 0-d CPU tensor."""
    if isinstance(step, Tensor):
        return step.detach().to(device="cpu", dtype=torch.float32).reshape(())
    return torch.tensor(float(step), dtype=torch.float32)


@dataclass(frozen=True)
class PathRow:
    """One parameter of :meth:`Lion.paths`."""

    group: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    momentum: str
    path: str
    why: str


class PathReport(list):
    """The rows of :meth:`Lion.paths`; ``str()`` is a table."""

    def __str__(self) -> str:
        header = ("group", "parameter", "shape", "dtype", "momentum", "path", "why not faster")
        cells = [header] + [
            (str(r.group), r.name, "x".join(map(str, r.shape)) or "()", r.dtype, r.momentum, r.path, r.why or "-") for r in self
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in cells)
