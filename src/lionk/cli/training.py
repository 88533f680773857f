"""The training loop shared by compare and sweep: optimizer specs, nanoGPT's schedule, one measured run.

Schedule (nanoGPT's get_lr), for a peak lr, a floor min_lr = min_lr_ratio * lr, W warm-up steps and T steps:
lr_t = lr * (t+1)/(W+1) for t < W, then min_lr + (1 + cos(pi (t-W)/(T-W)))/2 * (lr - min_lr).

Weight decay goes to 2-D (and larger) tensors only, as nanoGPT's configure_optimizers does; layer norms and
biases are not decayed. Gradients are clipped to global norm grad_clip before each step (under gradient release,
which never holds the whole gradient, each tensor's gradient to norm grad_clip on its own). Every run starts
from the same initial weights and draws the same batches (a generator seeded with seed), so optimizers
differ only in their updates. Every loss estimate is the mean over the same eval_iters batches of EVAL_BATCH_SIZE
windows of each split (drawn afresh from a generator seeded with seed + 1, whatever the training batch size), so
estimates differ only by the weights, the final loss does not depend on how often the run was evaluated, and runs
at different batch sizes are scored on the same text.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .. import Lion, LionSF, diagnostics, from_adamw, get_kernel, kernels, state_bytes
from ..memory import MemoryTracker, step_temporaries
from . import CLIError
from .checks import integer, number
from .data import Corpus
from .gpt import GPT, GPTConfig
from .machine import OtherLoad, PeakRSS

__all__ = ["OptimSpec", "Settings", "RunResult", "parse_optims", "lr_at", "initial_state", "train"]

#: Windows per evaluation batch: fixed, so that every run of a seed is scored on the same windows.
EVAL_BATCH_SIZE = 12

_NAMES = ("lion", "lionsf", "adamw")
_LION_ONLY = ("kernel", "factor", "cautious", "momentum", "sr", "release", "wd_mode")
SF_MODES = ("agreement", "averaging")
MOMENTUM_STORAGES = ("float32", "bfloat16", "int8")
WEIGHT_DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "constant")
WD_MODES = ("decoupled", "independent", "cautious")
#: The kernels the command line documents (lionk.kernels has the same under these names).
KERNELS = "sign, l2, lp(p=..), power(p=..), quadratic, huber(a=..), relativistic(a=..), tanh(a=..), linf, nuclear(method=..)"
#: --optim keys: what each means, for --help.
OPTION_HELP = {
    "kernel": f"Lion-K kernel: {KERNELS} (lion, lionsf)",
    "lr": "peak learning rate, > 0",
    "wd": "weight decay of the 2-D weights, >= 0",
    "beta1": "in [0, 1)",
    "beta2": "in [0, 1)",
    "factor": "from_adamw factor, > 0: Lion's lr = AdamW's lr / factor, wd = AdamW's wd * factor (lion, lionsf)",
    "cautious": "0 or 1: cautious Lion (lion, lionsf)",
    "mode": f"{' or '.join(SF_MODES)} (lionsf)",
    "schedule": "cosine (warm-up then cosine; the default but for lionsf) or constant (warm-up then the peak lr)",
    "momentum": f"momentum storage: {', '.join(MOMENTUM_STORAGES)} (lion, lionsf; default: the weights' dtype)",
    "sr": "0 or 1: stochastic rounding of bfloat16 weights, default 1 (lion, lionsf)",
    "release": "0 or 1: gradient release, each parameter stepped inside backward and its gradient freed at once; --grad-clip "
    "then clips each tensor's gradient on its own (lion, lionsf in agreement mode)",
    "wd_mode": "decoupled (decay lr * wd per step, the default), independent (wd * lr / peak lr per step: give wd as "
    "lr * wd) or cautious (decay only where the step points the same way) (lion, lionsf)",
    "weights": f"{' or '.join(WEIGHT_DTYPES)}: the dtype the weights and gradients are stored in (the model computes in float32)",
}
_CHOICES = {"mode": SF_MODES, "schedule": SCHEDULES, "momentum": MOMENTUM_STORAGES, "weights": WEIGHT_DTYPES, "wd_mode": WD_MODES}
#: numeric keys: (low, high, low_open, high_open)
_RANGES = {
    "lr": (0.0, None, True, False),
    "wd": (0.0, None, False, False),
    "beta1": (0.0, 1.0, False, True),
    "beta2": (0.0, 1.0, False, True),
    "factor": (0.0, None, True, False),
}


@dataclass(frozen=True)
class OptimSpec:
    """One contender: name is 'lion', 'lionsf' or 'adamw'; options override its defaults (see parse_optims)."""

    label: str
    name: str
    options: dict[str, str] = field(default_factory=dict)


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on sep outside parentheses (so kernel=huber(a=0.5) stays whole)."""
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


def _check_kernel(spec: str, where: str) -> None:
    """CLIError for an unknown kernel name (listing the documented ones) or invalid kernel arguments."""
    match = re.match(r"\s*([A-Za-z_]\w*)", spec)
    if match is None or match.group(1).lower() not in kernels.kernel_names():
        raise CLIError(f"unknown kernel {spec!r}{where} (kernels: {KERNELS})")
    try:
        get_kernel(spec)
    except ValueError as err:
        raise CLIError(f"invalid kernel {spec!r}{where}: {err}") from None


def _check_option(name: str, key: str, value: str, entry: str) -> None:
    where = f" in --optim entry {entry!r}"
    if (name == "adamw" and key in _LION_ONLY) or (name != "lionsf" and key == "mode"):
        raise CLIError(f"option {key!r} does not apply to {name}{where}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise CLIError(f"invalid {key} {value!r}{where}: must be one of {', '.join(_CHOICES[key])}")
    if key in ("cautious", "sr", "release") and value not in ("0", "1"):
        raise CLIError(f"invalid {key} {value!r}{where}: must be 0 or 1")
    if key in _RANGES:
        low, high, low_open, high_open = _RANGES[key]
        number(key, value, low, high, low_open=low_open, high_open=high_open, where=where)
    if key == "kernel":
        _check_kernel(value, where)


def parse_optims(text: str) -> list[OptimSpec]:
    """Parse --optim: comma-separated entries name[:key=value[:key=value...]].

    name is lion, lionsf (lionk.LionSF) or adamw; the keys and their values are listed in OPTION_HELP.
    Example: lion,lion:kernel=l2,lionsf:mode=averaging,adamw:lr=3e-3,lion:weights=bfloat16:sr=0.
    """
    specs = []
    for entry in _split_top_level(text, ","):
        if not entry:
            raise CLIError(f"empty entry in --optim {text!r}")
        name, *pairs = _split_top_level(entry, ":")
        if name not in _NAMES:
            raise CLIError(f"unknown optimizer {name!r} in --optim (known: {', '.join(_NAMES)})")
        options: dict[str, str] = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            key, value = key.strip(), value.strip()
            if not eq or key not in OPTION_HELP:
                raise CLIError(f"invalid option {pair!r} for {name} in --optim (expected key=value, keys: {', '.join(OPTION_HELP)})")
            if key in options:
                raise CLIError(f"option {key!r} given twice in --optim entry {entry!r}")
            _check_option(name, key, value, entry)
            options[key] = value
        if options.get("release") == "1" and options.get("mode") == "averaging":
            raise CLIError(
                f"option release=1 does not apply to lionsf in averaging mode in --optim entry {entry!r}: its averaged "
                "weights need the whole step at once (use mode=agreement)"
            )
        specs.append(OptimSpec(label=entry, name=name, options=options))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise CLIError(f"duplicate entries in --optim {text!r}")
    return specs


@dataclass(frozen=True)
class Settings:
    """One training run's task and AdamW baseline (Lion's lr and wd follow from from_adamw)."""

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
        """CLIError naming the first flag whose value is out of range."""
        for name in ("steps", "batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_interval", "eval_iters"):
            integer(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        integer("--warmup", self.warmup, 0)
        integer("--seed", self.seed, 0, 2**63 - 1)
        number("--lr", self.adamw_lr, 0.0, low_open=True)
        number("--weight-decay", self.adamw_wd, 0.0)
        number("--factor", self.factor, 0.0, low_open=True)
        number("--grad-clip", self.grad_clip, 0.0)
        if self.n_embd % self.n_head:
            raise CLIError(f"invalid --n-embd {self.n_embd}: must be a multiple of --n-head {self.n_head}")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"betas": list(self.betas)}

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag that sets the field name (the field's name where no flag does: betas, min_lr_ratio)."""
        flags = {"adamw_lr": "--lr", "adamw_wd": "--weight-decay", "betas": "betas", "min_lr_ratio": "min_lr_ratio"}
        return flags.get(name, f"--{name.replace('_', '-')}")


def lr_at(step: int, peak: float, settings: Settings, schedule: str = "cosine") -> float:
    """nanoGPT's linear warm-up then cosine decay to min_lr_ratio * peak at the last step (constant: the peak)."""
    floor = settings.min_lr_ratio * peak
    if step < settings.warmup:
        return peak * (step + 1) / (settings.warmup + 1)
    if schedule == "constant":
        return peak
    span = max(settings.steps - settings.warmup, 1)
    ratio = min((step - settings.warmup) / span, 1.0)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - floor)


def _vector_kernel(kernel: str) -> str:
    """The kernel for the 1-D weights (norm gains): kernel itself, or sign where it takes matrices only (nuclear)."""
    try:
        Lion([torch.zeros(2, requires_grad=True)], kernel=kernel)
    except ValueError:
        return "sign"
    return kernel


def hyperparameters(spec: OptimSpec, settings: Settings) -> dict[str, Any]:
    """The resolved settings of a contender: AdamW's are the baseline, Lion's come from from_adamw."""
    o = spec.options
    betas = (float(o.get("beta1", settings.betas[0])), float(o.get("beta2", settings.betas[1])))
    if spec.name == "adamw":
        return {"lr": float(o.get("lr", settings.adamw_lr)), "weight_decay": float(o.get("wd", settings.adamw_wd)), "betas": betas}
    hp = from_adamw(settings.adamw_lr, settings.adamw_wd, float(o.get("factor", settings.factor)), betas=betas)
    hp["lr"] = float(o.get("lr", hp["lr"]))
    hp["weight_decay"] = float(o.get("wd", hp["weight_decay"]))
    hp["kernel"] = o.get("kernel", "sign")
    vector_kernel = _vector_kernel(hp["kernel"])
    if vector_kernel != hp["kernel"]:
        hp["vector_kernel"] = vector_kernel  # the 1-D weights' kernel, where the kernel takes matrices only
    hp["cautious"] = o.get("cautious", "0") == "1"
    hp["momentum_dtype"] = o.get("momentum")  # None: the weights' dtype
    hp["stochastic_rounding"] = o.get("sr", "1") == "1"
    hp["gradient_release"] = o.get("release", "0") == "1"
    hp["weight_decay_mode"] = o.get("wd_mode", WD_MODES[0])
    if spec.name == "lionsf":
        hp["mode"] = o.get("mode", SF_MODES[0])
    return hp


def schedule_of(spec: OptimSpec) -> str:
    """The lr schedule of a contender: LionSF runs at a constant lr unless told otherwise."""
    return spec.options.get("schedule", "constant" if spec.name == "lionsf" else "cosine")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's two groups: the 2-D (and larger) weights with weight_decay, the rest (gains, biases) without."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


#: Builds a contender's optimizer from the model and its resolved hyperparameters (see train's ``make``).
Factory = Callable[[torch.nn.Module, dict[str, Any]], torch.optim.Optimizer]


def _make_optimizer(spec: OptimSpec, model: torch.nn.Module, hp: dict[str, Any], grad_clip: float) -> torch.optim.Optimizer:
    groups = param_groups(model, hp["weight_decay"])
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=hp["lr"], betas=hp["betas"])
    groups[1]["kernel"] = hp.get("vector_kernel", hp["kernel"])
    keys = ("lr", "betas", "kernel", "cautious", "momentum_dtype", "stochastic_rounding", "gradient_release", "weight_decay_mode")
    kw = {k: hp[k] for k in keys}
    if hp["gradient_release"] and grad_clip > 0:
        kw["max_grad_norm"] = grad_clip  # per tensor: no global norm exists under gradient release
    if spec.name == "lionsf":
        return LionSF(groups, mode=hp["mode"], **kw)
    return Lion(groups, **kw)


def _forward(model: GPT) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """model(x, y); for low-precision weights, computed with float32 copies of them (gradients flow back
    to the stored weights in their dtype), so that a run differs from float32 only in how weights are stored."""
    if next(model.parameters()).dtype == torch.float32:
        return model
    return lambda x, y: torch.func.functional_call(model, {n: p.float() for n, p in model.named_parameters()}, (x, y))


#: The parameter groups every run has, in order: decayed 2-D weights, then the undecayed 1-D ones.
GROUP_NAMES = ("2-D weights", "1-D weights")


#: The steps over which a run's training memory is measured (it is the same at every step after the first, which
#: makes the state; measuring costs a look at every tensor at each gradient).
MEMORY_STEPS = 3


@dataclass
class RunResult:
    """What one run measured. Curves are lists of [step, value]; other_load is the share of the machine's
    CPU time that other work took during the run (None where it cannot be measured), a measure of how
    contended the speed figures are; diagnostics holds one dict per param group (Lion and LionSF runs).

    memory: bytes per parameter (params of them) at their peak over the first MEMORY_STEPS steps, measured on the
    live tensors (lionk.memory.MemoryTracker): "weights", "gradients", "state" and "together" (the largest sum
    of the three at one moment), and "step_temporaries", what one optimizer.step() allocated beyond them
    (lionk.memory.step_temporaries; None under gradient release, whose steps run inside backward). peak_rss_mb is
    the process's peak resident memory during this run (peak_rss_per_run False: since the process started).
    seed is the run's Settings.seed, threads the torch CPU threads it ran with.
    """

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
    other_load: float | None = None
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    params: int = 0
    memory: dict[str, float | None] = field(default_factory=dict)
    peak_rss_per_run: bool = False
    seed: int | None = None
    threads: int | None = None

    @property
    def final_train(self) -> float:
        return self.train_loss[-1][1]

    @property
    def final_val(self) -> float:
        return self.val_loss[-1][1]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def initial_state(settings: Settings, vocab_size: int) -> dict[str, torch.Tensor]:
    """The initial weights every run starts from (model seeded with settings.seed)."""
    torch.manual_seed(settings.seed)
    return {k: v.clone() for k, v in GPT(settings.model_config(vocab_size)).state_dict().items()}


@torch.no_grad()
def _estimate(model: GPT, forward: Callable, optimizer: torch.optim.Optimizer, corpus: Corpus, settings: Settings) -> dict[str, float]:
    """Mean loss over the same eval_iters batches of EVAL_BATCH_SIZE windows of each split (LionSF's parameters switched
    to their average meanwhile)."""
    schedule_free = isinstance(optimizer, LionSF)
    if schedule_free:
        optimizer.eval()
    model.eval()
    generator = torch.Generator().manual_seed(settings.seed + 1)
    out = {}
    for split in ("train", "val"):
        losses = [
            forward(*corpus.batch(split, EVAL_BATCH_SIZE, settings.block_size, generator))[1].item() for _ in range(settings.eval_iters)
        ]
        out[split] = sum(losses) / len(losses)
    model.train()
    if schedule_free:
        optimizer.train()
    return out


def _diagnostics(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """lionk.diagnostics per param group, as plain dicts (LionSF's averaged weights in averaging mode)."""
    if not isinstance(optimizer, Lion):
        return []
    schedule_free = isinstance(optimizer, LionSF)
    if schedule_free:
        optimizer.eval()
    groups = diagnostics(optimizer)
    if schedule_free:
        optimizer.train()
    return [
        {
            "group": GROUP_NAMES[g.index],
            "weight_decay": g.weight_decay,
            "decay": g.decay,
            "kernel": g.kernel,
            "constraint": g.constraint,
            "boundary_fraction": g.boundary_fraction,
            "max_scaled": g.max_scaled,
            "stationarity": g.stationarity,
        }
        for g in groups
    ]


def train(
    spec: OptimSpec,
    corpus: Corpus,
    settings: Settings,
    init: dict[str, torch.Tensor],
    *,
    progress: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    make: Factory | None = None,
) -> RunResult:
    """Train one model with one optimizer for settings.steps steps and measure it.

        progress(step, loss) is called after every step; log receives one line per evaluation. ``make(model, hp)``, if
    given, builds the optimizer instead of spec.name (hp: spec's resolved hyperparameters; with release=1 the factory
    sets up its own gradient release, and the loop neither clips globally nor measures a step's temporaries).
        Tokens/s counts training tokens over the training time (evaluations excluded); the optimizer-step time is the
        median of optimizer.step() after 5 warm-up steps; memory is measured as RunResult says.
    """
    load = OtherLoad()
    rss = PeakRSS()
    model = GPT(settings.model_config(corpus.vocab_size))
    model.load_state_dict(init)
    model.to(getattr(torch, spec.options.get("weights", "float32")))
    forward = _forward(model)
    hp = hyperparameters(spec, settings)
    tracker = MemoryTracker(model.parameters())  # before the optimizer: its hooks see a gradient before release frees it
    optimizer = make(model, hp) if make is not None else _make_optimizer(spec, model, hp, settings.grad_clip)
    tracker.watch(optimizer)
    temporaries = None
    peak = hp["lr"]
    schedule = schedule_of(spec)
    batches = torch.Generator().manual_seed(settings.seed)
    train_curve, val_curve, step_loss, step_times = [], [], [], []
    train_time = 0.0
    start = time.perf_counter()
    for step in range(settings.steps + 1):
        if step % settings.eval_interval == 0 or step == settings.steps:
            losses = _estimate(model, forward, optimizer, corpus, settings)
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
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # an optimizer that keeps its lr as a tensor (as torch's schedulers do)
            else:
                group["lr"] = lr
        x, y = corpus.batch("train", settings.batch_size, settings.block_size, batches)
        optimizer.zero_grad(set_to_none=True)  # before the forward pass: last step's gradients are not held with its activations
        _, loss = forward(x, y)
        loss.backward()
        if settings.grad_clip > 0 and not hp.get("gradient_release"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        s0 = time.perf_counter()
        if step == MEMORY_STEPS - 1 and not hp.get("gradient_release"):  # a step after the first, not among the timed
            temporaries = step_temporaries(optimizer.step)
        else:
            optimizer.step()
        t1 = time.perf_counter()
        if step == MEMORY_STEPS - 1:
            tracker.close()
        step_times.append(t1 - s0)
        train_time += t1 - t0
        step_loss.append(loss.item())
        if progress is not None:
            progress(step, step_loss[-1])
    tracker.close()
    timed = sorted(step_times[5:] or step_times or [float("nan")])
    steps_done = len(step_loss)
    memory: dict[str, float | None] = dict(tracker.per_param())
    memory["step_temporaries"] = None if temporaries is None else temporaries / max(tracker.numel, 1)
    return RunResult(
        label=spec.label,
        hyperparameters={k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()},
        train_loss=train_curve,
        val_loss=val_curve,
        step_loss=step_loss,
        tokens_per_s=steps_done * settings.batch_size * settings.block_size / train_time if train_time > 0 else float("nan"),
        optimizer_step_ms=1e3 * timed[len(timed) // 2],
        state_bytes=state_bytes(optimizer),
        peak_rss_mb=rss.mb(),
        wall_s=time.perf_counter() - start,
        other_load=load.share(),
        diagnostics=_diagnostics(optimizer),
        params=tracker.numel,
        memory=memory,
        peak_rss_per_run=rss.per_interval,
        seed=settings.seed,
        threads=torch.get_num_threads(),
    )


def parse_float_list(text: str, flag: str) -> list[float]:
    """'0.333,1,3' -> [0.333, 1.0, 3.0]: comma-separated, distinct, positive finite numbers; else CLIError."""
    entries = [v.strip() for v in text.split(",")]
    if not text.strip() or any(not v for v in entries):
        raise CLIError(f"invalid {flag} {text!r}: an empty entry (expected comma-separated positive numbers, e.g. 0.333,1,3)")
    values = [number("value", v, 0.0, low_open=True, where=f" in {flag} {text!r}") for v in entries]
    if len(set(values)) != len(values):
        raise CLIError(f"invalid {flag} {text!r}: a value is repeated")
    return values
