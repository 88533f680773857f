r"""The training loop shared by ``compare`` and ``sweep``: optimizer specs, nanoGPT's schedule, one measured run.

Schedule (nanoGPT's ``get_lr``), for a peak lr :math:`\eta`, floor :math:`\eta_{min} = \rho\eta`, ``W`` warm-up
steps and ``T`` total steps:

.. math::
    \eta_t = \eta\,\frac{t+1}{W+1} \ (t < W), \qquad
    \eta_t = \eta_{min} + \tfrac12\bigl(1 + \cos(\pi\,\tfrac{t-W}{T-W})\bigr)(\eta - \eta_{min}) \ (t \ge W).

Weight decay goes to 2-D (and larger) tensors only, as nanoGPT's ``configure_optimizers`` does; layer norms and
biases are not decayed. Gradients are clipped to global norm ``grad_clip`` before each step. Every run starts
from the same initial weights and draws the same batches (a generator seeded with ``seed``), so optimizers
differ only in their updates. The loss estimate is the mean over ``eval_iters`` batches of each split.
"""

from __future__ import annotations

import math
import re
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..diagnostics import diagnostics, format_diagnostics
from ..hparams import from_adamw
from ..kernels import get_kernel
from ..memory import state_bytes
from ..optimizer import Lion
from ..schedule_free import MODES as SF_MODES
from ..schedule_free import LionSF
from . import CLIError
from .data import Corpus
from .gpt import GPT, GPTConfig

__all__ = ["OptimSpec", "Settings", "RunResult", "parse_optims", "lr_at", "initial_state", "train"]

_OPTIONS = {"kernel", "lr", "wd", "beta1", "beta2", "factor", "cautious", "mode", "schedule", "momentum", "sr", "weights"}
_NUMERIC = _OPTIONS - {"kernel", "mode", "schedule", "momentum", "weights"}
_NAMES = ("lion", "lionsf", "adamw")
_LION_ONLY = ("kernel", "factor", "cautious", "momentum", "sr")
MOMENTUM_STORAGES = ("float32", "bfloat16", "int8")
WEIGHT_DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class OptimSpec:
    """One contender: ``name`` is 'lion', 'lionsf' or 'adamw'; ``options`` override its defaults (see :func:`parse_optims`)."""

    label: str
    name: str
    options: dict[str, str] = field(default_factory=dict)


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses (so ``kernel=huber(a=0.5)`` stays whole)."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def parse_optims(text: str) -> list[OptimSpec]:
    """Parse ``--optim``: comma-separated entries ``name[:key=value[:key=value...]]``.

    ``name`` is ``lion``, ``lionsf`` (:class:`lionk.LionSF`) or ``adamw``; keys are ``kernel`` (Lion/LionSF, a
    kernel spec such as ``l2`` or ``huber(a=0.5)``), ``lr``, ``wd``, ``beta1``, ``beta2``, ``factor`` (Lion/LionSF:
    the from_adamw factor), ``cautious`` (Lion/LionSF, 0/1), ``mode`` (LionSF: agreement or averaging),
    ``schedule`` (``cosine``: warm-up then cosine, the default except for LionSF; ``constant``: warm-up then the
    peak lr, LionSF's default), ``momentum`` (Lion/LionSF momentum storage: float32, bfloat16 or int8), ``sr``
    (Lion/LionSF stochastic rounding, 0/1, default 1) and ``weights`` (float32 or bfloat16: the dtype the weights
    and gradients are stored in; the forward and backward compute in float32 either way, so that only the
    storage differs). Example: ``lion,lion:kernel=l2,lionsf:mode=averaging,adamw:lr=3e-3,lion:weights=bfloat16:sr=0``.
    """
    specs = []
    for entry in _split_top_level(text, ","):
        if not entry:
            raise CLIError(f"empty entry in --optim {text!r}")
        name, *pairs = _split_top_level(entry, ":")
        if name not in _NAMES:
            raise CLIError(f"unknown optimizer {name!r} in --optim (known: {', '.join(_NAMES)})")
        options = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or key not in _OPTIONS:
                raise CLIError(f"invalid option {pair!r} for {name} in --optim (expected key=value, keys: {', '.join(sorted(_OPTIONS))})")
            if (name == "adamw" and key in _LION_ONLY) or (name != "lionsf" and key == "mode"):
                raise CLIError(f"option {key!r} does not apply to {name}")
            options[key] = value
        if options.get("mode", SF_MODES[0]) not in SF_MODES:
            raise CLIError(f"invalid mode {options['mode']!r} in --optim entry {entry!r} (one of: {', '.join(SF_MODES)})")
        if options.get("schedule", SCHEDULES[0]) not in SCHEDULES:
            raise CLIError(f"invalid schedule {options['schedule']!r} in --optim entry {entry!r} (one of: {', '.join(SCHEDULES)})")
        if options.get("momentum", MOMENTUM_STORAGES[0]) not in MOMENTUM_STORAGES:
            raise CLIError(f"invalid momentum {options['momentum']!r} in --optim entry {entry!r} (one of: {', '.join(MOMENTUM_STORAGES)})")
        if options.get("weights", WEIGHT_DTYPES[0]) not in WEIGHT_DTYPES:
            raise CLIError(f"invalid weights {options['weights']!r} in --optim entry {entry!r} (one of: {', '.join(WEIGHT_DTYPES)})")
        if "kernel" in options:
            get_kernel(options["kernel"])  # raises ValueError for an unknown kernel
        for key in _NUMERIC:
            if key in options:
                try:
                    float(options[key])
                except ValueError:
                    raise CLIError(f"invalid number {options[key]!r} for {key} in --optim entry {entry!r}") from None
        specs.append(OptimSpec(label=entry, name=name, options=options))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise CLIError(f"duplicate entries in --optim {text!r}")
    return specs


@dataclass(frozen=True)
class Settings:
    """One training run's task and AdamW baseline (Lion's lr and wd follow from ``from_adamw``)."""

    steps: int = 2000
    batch_size: int = 12
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    adamw_lr: float = 1e-3
    adamw_wd: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    factor: float = 3.0
    warmup: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337

    def check(self) -> None:
        for name in ("steps", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_interval", "eval_iters"):
            if getattr(self, name) <= 0:
                raise CLIError(f"invalid --{name.replace('_', '-')}: {getattr(self, name)} (must be > 0)")
        if self.warmup < 0:
            raise CLIError(f"invalid --warmup: {self.warmup} (must be >= 0)")
        if not self.adamw_lr > 0 or self.adamw_wd < 0 or self.grad_clip < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise CLIError("invalid lr, weight decay, grad clip or min-lr ratio (need lr > 0, wd >= 0, clip >= 0, ratio in [0, 1])")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd)


def lr_at(step: int, peak: float, settings: Settings, schedule: str = "cosine") -> float:
    """nanoGPT's linear warm-up then cosine decay to ``min_lr_ratio * peak`` at the last step (``constant``: the peak)."""
    floor = settings.min_lr_ratio * peak
    if step < settings.warmup:
        return peak * (step + 1) / (settings.warmup + 1)
    if schedule == "constant":
        return peak
    span = max(settings.steps - settings.warmup, 1)
    ratio = min((step - settings.warmup) / span, 1.0)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)


def hyperparameters(spec: OptimSpec, settings: Settings) -> dict[str, Any]:
    """The resolved settings of a contender: AdamW's are the baseline, Lion's come from ``from_adamw``."""
    o = spec.options
    betas = (float(o.get("beta1", settings.betas[0])), float(o.get("beta2", settings.betas[1])))
    if spec.name == "adamw":
        return {"lr": float(o.get("lr", settings.adamw_lr)), "weight_decay": float(o.get("wd", settings.adamw_wd)), "betas": betas}
    hp = from_adamw(settings.adamw_lr, settings.adamw_wd, float(o.get("factor", settings.factor)), betas=betas)
    hp["lr"] = float(o.get("lr", hp["lr"]))
    hp["weight_decay"] = float(o.get("wd", hp["weight_decay"]))
    hp["kernel"] = o.get("kernel", "sign")
    hp["cautious"] = bool(int(float(o.get("cautious", 0))))
    hp["momentum_dtype"] = o.get("momentum")  # None: the weights' dtype
    hp["stochastic_rounding"] = bool(int(float(o.get("sr", 1))))
    if spec.name == "lionsf":
        hp["mode"] = o.get("mode", SF_MODES[0])
    return hp


def schedule_of(spec: OptimSpec) -> str:
    """The lr schedule of a contender: LionSF runs at a constant lr unless told otherwise."""
    return spec.options.get("schedule", "constant" if spec.name == "lionsf" else "cosine")


def _make_optimizer(spec: OptimSpec, model: torch.nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": hp["weight_decay"]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=hp["lr"], betas=hp["betas"])
    kw = {k: hp[k] for k in ("lr", "betas", "kernel", "cautious", "momentum_dtype", "stochastic_rounding")}
    if spec.name == "lionsf":
        return LionSF(groups, mode=hp["mode"], **kw)
    return Lion(groups, **kw)


def _forward(model: GPT) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``model(x, y)``; for low-precision weights, computed with float32 copies of them (gradients flow back
    to the stored weights in their dtype), so that a run differs from float32 only in how weights are stored."""
    if next(model.parameters()).dtype == torch.float32:
        return model
    return lambda x, y: torch.func.functional_call(model, {n: p.float() for n, p in model.named_parameters()}, (x, y))


@dataclass
class RunResult:
    """What one run measured. Curves are lists of ``[step, value]``."""

    label: str
    hyperparameters: dict[str, Any]
    train_loss: list[list[float]]
    val_loss: list[list[float]]
    step_loss: list[float]
    tokens_per_s: float
    optimizer_step_ms: float
    state_bytes: int
    peak_rss_mb: float
    wall_s: float
    diagnostics: str = ""

    @property
    def final_train(self) -> float:
        return self.train_loss[-1][1]

    @property
    def final_val(self) -> float:
        return self.val_loss[-1][1]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def initial_state(settings: Settings, vocab_size: int) -> dict[str, torch.Tensor]:
    """The initial weights every run starts from (model seeded with ``settings.seed``)."""
    torch.manual_seed(settings.seed)
    return {k: v.clone() for k, v in GPT(settings.model_config(vocab_size)).state_dict().items()}


@torch.no_grad()
def _estimate(
    model: GPT, forward: Callable, optimizer: torch.optim.Optimizer, corpus: Corpus, settings: Settings, generator: torch.Generator
) -> dict[str, float]:
    """Mean loss over ``eval_iters`` batches of each split (LionSF's parameters switched to their average meanwhile)."""
    schedule_free = isinstance(optimizer, LionSF)
    if schedule_free:
        optimizer.eval()
    model.eval()
    out = {}
    for split in ("train", "val"):
        losses = [
            forward(*corpus.batch(split, settings.batch_size, settings.block_size, generator))[1].item() for _ in range(settings.eval_iters)
        ]
        out[split] = sum(losses) / len(losses)
    model.train()
    if schedule_free:
        optimizer.train()
    return out


def train(
    spec: OptimSpec,
    corpus: Corpus,
    settings: Settings,
    init: dict[str, torch.Tensor],
    *,
    progress: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train one model with one optimizer for ``settings.steps`` steps and measure it.

    ``progress(step, loss)`` is called after every step; ``log`` receives one line per evaluation.
    Tokens/s counts training tokens over the training time (evaluations excluded); the optimizer-step time is the
    median of ``optimizer.step()`` after 5 warm-up steps; peak RSS is the process's high-water mark after the run
    (cumulative over the runs of one process).
    """
    model = GPT(settings.model_config(corpus.vocab_size))
    model.load_state_dict(init)
    model.to(getattr(torch, spec.options.get("weights", "float32")))
    forward = _forward(model)
    hp = hyperparameters(spec, settings)
    optimizer = _make_optimizer(spec, model, hp)
    peak = hp["lr"]
    schedule = schedule_of(spec)
    batches = torch.Generator().manual_seed(settings.seed)
    evals = torch.Generator().manual_seed(settings.seed + 1)
    train_curve, val_curve, step_loss, step_times = [], [], [], []
    train_time = 0.0
    start = time.perf_counter()
    for step in range(settings.steps + 1):
        if step % settings.eval_interval == 0 or step == settings.steps:
            losses = _estimate(model, forward, optimizer, corpus, settings, evals)
            train_curve.append([step, losses["train"]])
            val_curve.append([step, losses["val"]])
            if log is not None:
                log(f"{spec.label}: step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}")
            if not all(math.isfinite(v) for v in losses.values()):
                if log is not None:
                    log(f"{spec.label}: loss is not finite at step {step}; run stopped")
                break
        if step == settings.steps:
            break
        t0 = time.perf_counter()
        lr = lr_at(step, peak, settings, schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = corpus.batch("train", settings.batch_size, settings.block_size, batches)
        _, loss = forward(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        s0 = time.perf_counter()
        optimizer.step()
        t1 = time.perf_counter()
        step_times.append(t1 - s0)
        train_time += t1 - t0
        step_loss.append(loss.item())
        if progress is not None:
            progress(step, step_loss[-1])
    timed = sorted(step_times[5:] or step_times or [float("nan")])
    report = format_diagnostics(diagnostics(optimizer), per_tensor=False) if isinstance(optimizer, Lion) else ""
    steps_done = len(step_loss)
    peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return RunResult(
        label=spec.label,
        hyperparameters={k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()},
        train_loss=train_curve,
        val_loss=val_curve,
        step_loss=step_loss,
        tokens_per_s=steps_done * settings.batch_size * settings.block_size / train_time if train_time > 0 else float("nan"),
        optimizer_step_ms=1e3 * timed[len(timed) // 2],
        state_bytes=state_bytes(optimizer),
        peak_rss_mb=peak_rss_kb / (1024 if sys.platform != "darwin" else 1024 * 1024),
        wall_s=time.perf_counter() - start,
        diagnostics=report,
    )


def parse_float_list(text: str, what: str) -> list[float]:
    """'1e-4,3e-4' -> [1e-4, 3e-4]; every value must be a positive finite number."""
    try:
        values = [float(v) for v in re.split(r"[,\s]+", text.strip()) if v]
    except ValueError:
        raise CLIError(f"invalid {what} {text!r} (expected comma-separated numbers)") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise CLIError(f"invalid {what} {text!r} (expected positive numbers)")
    return values
