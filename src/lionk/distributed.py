r"""Lion across processes: ``DistributedLion`` (1-bit sign votes, Liu et al. 2024) and traffic counting.

Plain data parallelism needs nothing from lionk: under DDP the gradients arrive averaged and :class:`lionk.Lion`
runs unchanged; under FSDP2 (``torch.distributed.fsdp.fully_shard``) the parameters are DTensors, the elementwise
kernels act on each rank's shard and the tensor-scope kernels, the cautious fraction and :func:`lionk.diagnostics`
see the whole tensor (see :mod:`lionk._engine.torch_paths`).

:class:`DistributedLion` replaces the gradient all-reduce. Each of the :math:`W` ranks computes its gradient
:math:`g_i` on its own batch, keeps its own momentum :math:`m_i` and forms

.. math::
    c_i = \beta_1 m_i + (1-\beta_1) g_i, \qquad s_i = q(\nabla K(c_i)) \in \{-1, 0, +1\}, \qquad
    m_i \leftarrow \beta_2 m_i + (1-\beta_2) g_i .

The :math:`s_i` are exchanged bit-packed and every rank applies the same aggregate

.. math::
    v = \mathrm{sign}\Big(\sum_i s_i\Big) \ (\texttt{vote="majority"}, \text{ties give } 0), \qquad
    v = \frac{1}{W}\sum_i s_i \ (\texttt{vote="mean"}), \qquad
    x \leftarrow x\,(1 - \eta\lambda) - \eta\, v,

so replicas that start equal stay bitwise equal (:meth:`DistributedLion.check_replicas` verifies it).

Quantisation :math:`q`: for ``kernel="sign"`` it is the identity (the vote is exact). For the other bounded
elementwise kernels (``huber``, ``relativistic``, ``tanh``: :math:`u = \nabla K(c) \in [-1, 1]`) it is the unbiased
stochastic rounding :math:`P(s=+1) = (1+u)/2`, :math:`P(s=-1) = (1-u)/2` (so :math:`E[s] = u`), drawn from a
generator seeded by ``(seed, step, rank)``; unbounded kernels (``power``, ``quadratic``) and tensor-scope kernels
are rejected with a ValueError, since one bit cannot carry them without a scale. In both cases :math:`u = 0`
exactly gives :math:`s = 0`.

Zeros: one bit cannot say 0, and sign(0) = 0 matters (a weight with no gradient must not move). Each step
every rank, one without gradients too, all-reduces a 6-entry int64 flag vector (48 bytes: any exact zero in
:math:`s_i`, any non-finite :math:`c_i`, and twice each the element count and a fingerprint of which parameters
step, so that ranks disagreeing on the parameters raise, all of them, before anything is updated). Without zeros a
rank sends one bit per element (the bit ``s_i > 0``); when some rank has a zero, every rank also sends a
second bit-packed mask ``s_i != 0`` that step: two bits per element.

Traffic: every collective this module issues is counted in :attr:`DistributedLion.traffic`
(a :class:`CommCounter`) by the bytes of this rank's input buffer; :func:`counting_allreduce_hook` counts
DDP's gradient buckets the same way, so the two are comparable. The vote is an all-gather: with the ring
algorithm a rank sends :math:`(W-1)/W` of the gathered buffer, i.e. :math:`(W-1)\,n/8` bytes for :math:`n`
elements, against :math:`2(W-1)/W \cdot 4n` for an fp32 ring all-reduce: :math:`64/W` times less wire traffic,
while the input payload is 32 times smaller at every :math:`W`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ._engine import where
from ._engine.torch_paths import store_slot
from ._engine.update import clip_per_tensor, decayed, ema, interpolate, lr_and_decay
from ._tensor import as_real, is_dtensor, opmath_dtype
from .kernels import Huber, Kernel, Relativistic, Sign, Tanh, get_kernel
from .optimizer import Lion, Work

__all__ = ["VOTES", "CommCounter", "DistributedLion", "counting_allreduce_hook", "pack_bits", "unpack_bits"]

#: The aggregation rules of :class:`DistributedLion`.
VOTES = ("majority", "mean")
_STOCHASTIC = (Huber, Relativistic, Tanh)  # bounded elementwise kernels: grad K in [-1, 1]
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(bits: Tensor) -> Tensor:
    """Pack a 1-D bool tensor into uint8, 8 per byte: bit ``k`` (value ``2**k``) of byte ``j`` is ``bits[8j + k]``.

    The last byte is padded with zeros; the result has ``ceil(len(bits) / 8)`` bytes.
    """
    if bits.dtype != torch.bool or bits.dim() != 1:
        raise ValueError(f"pack_bits needs a 1-D bool tensor, got dtype {bits.dtype} and shape {tuple(bits.shape)}")
    pad = (-bits.numel()) % 8
    padded = torch.cat([bits, bits.new_zeros(pad)]) if pad else bits
    return (padded.view(-1, 8).to(torch.uint8) * _BIT_WEIGHTS.to(bits.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, n: int) -> Tensor:
    """Inverse of :func:`pack_bits` on the last dim: ``(..., ceil(n/8))`` uint8 -> ``(..., n)`` bool."""
    if packed.dtype != torch.uint8 or packed.shape[-1] * 8 < n or packed.shape[-1] * 8 >= n + 8:
        raise ValueError(
            f"unpack_bits needs uint8 of {(n + 7) // 8} bytes on the last dim for n={n}, got {packed.dtype} {tuple(packed.shape)}"
        )
    weights = _BIT_WEIGHTS.to(packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.flatten(-2)[..., :n]


@dataclass
class CommCounter:
    """Collectives issued by this rank: how many (``calls``) and the bytes of this rank's input buffers (``bytes``).

    For an all-reduce the input is the whole buffer; for an all-gather it is this rank's contribution. What goes
    over the wire depends on the algorithm (ring: 2(W-1)/W of an all-reduce's input, W-1 times an all-gather's).
    """

    process_group: Any = None
    calls: int = 0
    bytes: int = 0

    def add(self, tensor: Tensor) -> None:
        self.calls += 1
        self.bytes += tensor.numel() * tensor.element_size()

    def reset(self) -> None:
        self.calls = self.bytes = 0


def counting_allreduce_hook(state: CommCounter, bucket):  # unannotated: DDP rejects string annotations
    """A DDP communication hook: torch's default averaging all-reduce, counting each bucket in ``state``.

    ``ddp_model.register_comm_hook(counter, counting_allreduce_hook)``; ``counter.process_group`` is the group.
    ``bucket`` is a ``torch.distributed.GradBucket``; returns the all-reduce's ``torch.futures.Future[Tensor]``.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state.add(bucket.buffer())
    return allreduce_hook(state.process_group, bucket)


def _all_gather(output: Tensor, input: Tensor, group: Any) -> None:
    """All-gather ``input`` of every rank into ``output``, in rank order (``all_gather_single`` where torch has it)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, input, group=group)


class DistributedLion(Lion):
    r"""Distributed Lion (Liu et al., NeurIPS 2024): each rank votes with the sign of its own Lion update.

    Use it *instead of* DDP: give it the parameters of a plain (unwrapped) model replicated on every rank, call
    ``backward`` on each rank's own batch, then ``step()``. No gradient is all-reduced; each rank keeps its own
    momentum, sends one bit per element (two when some rank has exact zeros) and applies the common aggregate
    described in :mod:`lionk.distributed`:

    .. math::
        c_i = \beta_1 m_i + (1-\beta_1) g_i,\quad
        x \leftarrow x(1-\eta\lambda) - \eta\,\mathrm{agg}_i\, q(\nabla K(c_i)),\quad
        m_i \leftarrow \beta_2 m_i + (1-\beta_2) g_i

    with ``agg`` the majority (sign of the sum, ties 0) or the mean of the votes. With one rank and
    ``kernel="sign"`` it is exactly :class:`lionk.Lion`.

    Args:
        params, lr, betas, weight_decay, maximize: as for :class:`lionk.Lion` (per param group).
        kernel: ``"sign"`` (exact vote) or a bounded elementwise kernel (``huber``, ``relativistic``, ``tanh``:
            unbiased stochastic 1-bit rounding); others raise ValueError.
        nonfinite: ``"propagate"``: a non-finite ``c`` on any rank makes every rank raise RuntimeError before
            anything is updated (a bit cannot carry a NaN); ``"skip"``: a rank's non-finite gradient entries
            vote 0 and keep that rank's momentum.
        weight_decay_mode: as for :class:`lionk.Lion` ("cautious" compares the sign of the common vote with the weight).
        momentum_dtype, stochastic_rounding: as for :class:`lionk.Lion`, except that int8 momentum is not
            supported; the stochastic rounding of bf16/fp16 weights draws the same bits on every rank.
        vote: ``"majority"`` or ``"mean"``.
        process_group: the ranks that vote (default: the default group, which must be initialised).
        seed: seeds the stochastic rounding of non-sign kernels (the draw depends on seed, step and rank).
        check_every: when > 0, :meth:`check_replicas` runs after every ``check_every`` steps.

    All ranks must step the same parameters with the same shapes (checked every step). Its state per
    parameter is the rank's own ``exp_avg``; each param group counts its ``step``.
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
        momentum_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = True,
        weight_decay_mode: str = "decoupled",
        vote: str = "majority",
        process_group: Any = None,
        seed: int = 0,
        check_every: int = 0,
    ):
        if vote not in VOTES:
            raise ValueError(f"Invalid vote: {vote!r} (must be one of {VOTES})")
        for name, value in (("seed", seed), ("check_every", check_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 0)")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DistributedLion needs torch.distributed initialised first (torch.distributed.init_process_group)")
        self.vote = vote
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        self.seed = seed
        self.check_every = check_every
        self.traffic = CommCounter(process_group)
        super().__init__(
            params,
            lr,
            betas,
            weight_decay,
            kernel=kernel,
            maximize=maximize,
            nonfinite=nonfinite,
            momentum_dtype=momentum_dtype,
            stochastic_rounding=stochastic_rounding,
            weight_decay_mode=weight_decay_mode,
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its kernel must be sign or bounded elementwise, its parameters plain tensors."""
        super().add_param_group(param_group)
        group, index = self.param_groups[-1], len(self.param_groups) - 1
        kernel = get_kernel(group["kernel"])
        error = None
        if not isinstance(kernel, (Sign, *_STOCHASTIC)):
            error = (
                f"DistributedLion cannot vote with kernel {kernel.spec!r}{where(index)}: one bit carries sign (exactly) or a "
                "bounded elementwise kernel (huber, relativistic, tanh: stochastic rounding), not an unbounded or tensor-scope one"
            )
        elif group["cautious"]:
            error = f"DistributedLion does not support cautious=True{where(index)}"
        elif group["momentum_dtype"] == "int8":
            error = f"DistributedLion keeps its momentum in float storage (None, float32 or bfloat16), not int8{where(index)}"
        elif any(is_dtensor(p) for p in group["params"]):
            error = f"DistributedLion needs replicated plain tensors, not DTensors (FSDP2){where(index)}; use lionk.Lion with FSDP2"
        if error is not None:
            self.param_groups.pop()
            raise ValueError(error)

    def _collective(self, name: str, fn: Callable[[], Any], tensor: Tensor) -> None:
        """Run one collective on ``tensor`` (this rank's input), counting it and naming it when it fails."""
        self.traffic.add(tensor)
        try:
            fn()
        except RuntimeError as err:  # includes torch.distributed.DistError
            raise RuntimeError(
                f"DistributedLion: {name} failed on rank {self.rank} of {self.world_size} (another rank may have raised or "
                f"exited, or the process group's timeout passed): {err}"
            ) from err

    def _votes(self, group: dict[str, Any], kernel: Kernel, c: Tensor, bad: Tensor | None) -> Tensor:
        """This rank's vote s in {-1, 0, 1} (int8) for the interpolated momentum ``c``."""
        u = kernel.direction(c)
        if isinstance(kernel, Sign):
            s = torch.sign(u)
        else:
            key = hashlib.blake2b(f"{self.seed}:{group['step']}:{self.rank}".encode(), digest_size=7).digest()
            gen = torch.Generator(device=c.device).manual_seed(int.from_bytes(key, "little"))
            draw = torch.rand(c.shape, generator=gen, device=c.device, dtype=c.dtype) * 2 - 1
            s = torch.where(draw < u, 1.0, -1.0) * (u != 0)
        if bad is not None:
            s = s.masked_fill(bad, 0)
        return s.to(torch.int8).reshape(-1)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step: local momenta, one flag all-reduce, one bit-packed all-gather of the votes, the common update.

        Every rank takes part in the flag all-reduce of every step, also a rank without gradients. The flags carry
        the number of voting elements and a fingerprint of which parameters step on this rank: when the ranks
        disagree, every rank raises RuntimeError (before anything is updated) instead of pairing other ranks'
        votes with the wrong parameters.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._prepare()
        try:
            self._vote_and_step(work)
        finally:  # also when the ranks disagree: the cached slots keep no gradient alive
            self._forget_gradients(work)
        return loss

    def _vote_and_step(self, work: list[Work]) -> None:
        """step's work on the checked slots: local momenta, the two collectives, the common update."""
        for group, _, slots, _ in work:
            if group["max_grad_norm"] is not None:
                clip_per_tensor([s.grad for s in slots], group["max_grad_norm"])
        positions = self._positions()
        items = []  # (hyper, slot, opmath momentum, opmath gradient, skip mask)
        votes = []  # this rank's votes, flattened, in the same order
        nonfinite = False
        stepping = []
        for group, hyper, slots, _ in work:
            group.setdefault("step", 0)
            for s in slots:
                opmath = opmath_dtype(s.weight.dtype)
                m = s.storage.read(s.state, opmath)
                g = as_real(s.grad).to(opmath)
                if hyper.maximize:
                    g = -g
                bad = None
                if hyper.skip:
                    bad = ~torch.isfinite(g)
                    g = torch.where(bad, m, g)
                c = interpolate(m, g, hyper.beta1)
                if not hyper.skip and not nonfinite:
                    nonfinite = not bool(torch.isfinite(c).all())
                votes.append(self._votes(group, hyper.kernel, c, bad))
                items.append((hyper, s, m, g, bad))
                stepping.append(positions[s.param])
        device = next(iter(positions)).device if positions else torch.device("cpu")
        n = sum(v.numel() for v in votes)
        local = torch.cat(votes) if votes else torch.zeros(0, dtype=torch.int8, device=device)
        has_zero = bool((local == 0).any())
        fingerprint = int.from_bytes(hashlib.blake2b(repr(stepping).encode(), digest_size=7).digest(), "little")
        flags = torch.tensor([int(has_zero), int(nonfinite), n, -n, fingerprint, -fingerprint], dtype=torch.int64, device=device)
        self._collective("flag all-reduce", lambda: dist.all_reduce(flags, dist.ReduceOp.MAX, group=self.process_group), flags)
        any_zero, any_nonfinite, n_max, neg_n_min, fp_max, neg_fp_min = flags.tolist()
        if n_max != -neg_n_min or fp_max != -neg_fp_min:
            raise RuntimeError(
                f"DistributedLion: the ranks step different parameters (from {-neg_n_min} to {n_max} elements); rank {self.rank} "
                f"steps {len(stepping)} parameters ({n} elements). Every rank must have gradients for the same parameters; "
                "nothing was updated"
            )
        if any_nonfinite:
            raise RuntimeError(
                "DistributedLion: a rank has a non-finite gradient or momentum (nonfinite='propagate'); no parameter was updated. "
                "Use nonfinite='skip' to let such entries vote 0."
            )
        if n_max == 0:
            return
        payload = pack_bits(local > 0)
        if any_zero:
            payload = torch.cat([payload, pack_bits(local != 0)])
        gathered = payload.new_empty(self.world_size * payload.numel())
        self._collective("vote all-gather", lambda: _all_gather(gathered, payload, self.process_group), payload)
        gathered = gathered.view(self.world_size, -1)
        nbytes = (n + 7) // 8
        total = unpack_bits(gathered[:, :nbytes], n).to(torch.int32).sum(dim=0, dtype=torch.int32) * 2 - self.world_size
        if any_zero:
            nonzero = unpack_bits(gathered[:, nbytes:], n).to(torch.int32)
            total = total + (1 - nonzero).sum(dim=0, dtype=torch.int32)  # a zero vote counted -1 above; add it back
        offset = 0
        for hyper, s, m, g, bad in items:
            x = as_real(s.weight).to(g.dtype)
            size = x.numel()
            t = total[offset : offset + size].view(x.shape).to(g.dtype)
            offset += size
            agg = torch.sign(t) if self.vote == "majority" else t / self.world_size
            new_m = ema(m, g, hyper.beta2)
            if bad is not None:  # this rank's momentum keeps its skipped entries; the weight takes the common vote
                new_m = torch.where(bad, m, new_m)
            # the same rounding bits on every rank: replicas stay equal
            store_slot(s, decayed(x, agg, *lr_and_decay(hyper.lr, hyper.weight_decay, g.dtype), hyper.cautious_decay), new_m)
        for group, _, slots, _ in work:
            if slots:
                group["step"] += 1
            self._count_steps(slots)
        if self.check_every and self.param_groups[0]["step"] % self.check_every == 0:
            self.check_replicas()

    @torch.no_grad()
    def check_replicas(self) -> int:
        """Compare a checksum of every parameter's bytes across ranks; return it, or raise RuntimeError naming the
        ranks that differ. Costs a copy of the parameters to host memory and an all-gather of 8 bytes per rank."""
        digest = hashlib.blake2b(digest_size=7)
        device = torch.device("cpu")
        for group in self.param_groups:
            for p in group["params"]:
                device = p.device
                digest.update(p.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
        value = int.from_bytes(digest.digest(), "little")
        mine = torch.tensor([value], dtype=torch.int64, device=device)
        everyone = mine.new_empty(self.world_size)
        self._collective("replica check all-gather", lambda: _all_gather(everyone, mine, self.process_group), mine)
        sums = everyone.tolist()
        if len(set(sums)) != 1:
            raise RuntimeError(f"DistributedLion: replicas differ; parameter checksum per rank: {sums}")
        return value
