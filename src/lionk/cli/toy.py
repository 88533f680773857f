"""lionk toy: Lion-K on a 2-D convex problem whose unconstrained minimum lies outside the constraint set.

The problem is f(x) = 1/2 (x-a)^T H (x-a) with a diagonal H. Lion-K with weight decay wd and a decaying
lr converges to the minimiser x* of

    F(x) = f(x) + (1/wd) K*(wd x),

whose optimality condition is wd x = grad K(c) with c = -grad f(x) = H (a - x).

* Elementwise K (sign, quadratic, Huber, relativistic): the condition splits into one equation per
  coordinate, g(x_i) = wd x_i - k'(h_i (a_i - x_i)) = 0 with g increasing, so bisection between 0 and
  a_i finds the root (for sign it is clip(a_i, -1/wd, 1/wd)).
* K = ||.||_2 (kernel l2): min f subject to ||x||_2 <= 1/wd; outside the ball the KKT point is
  x = (H + mu I)^-1 H a, with mu >= 0 found by bisection on ||x||_2 = 1/wd.

Phase 1 of the analysis: when the kernel's set is a box (sign, Huber, relativistic) or a ball (l2), the
excess e_t = max(||x_t|| - 1/wd, 0) obeys e_t <= prod_{s<t} (1 - lr_s wd) e_0. The table compares the
steps a run takes to bring e_t below --tol with the steps that bound needs. The quadratic kernel has no
constraint set (its conjugate is a penalty), so it has no phase 1.

Writes toy.png: each kernel's trajectories over the contours of f with its set, and the excess e_t of
each run against the bound.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernels import Kernel, LpNorm, get_kernel
from ..optimizer import Lion
from . import CLIError
from ._deps import pyplot
from .checks import integer, number, output_dir

#: (label, kernel spec, norm of the constraint set or None)
KERNELS = (
    ("sign (Lion)", "sign", math.inf),
    ("l2 (LpNorm p=2)", "l2", 2.0),
    ("quadratic", "quadratic", None),
    ("Huber a=1", "huber(a=1.0)", math.inf),
    ("relativistic a=1", "relativistic(a=1.0)", math.inf),
)
A = (2.5, 0.6)  # unconstrained minimum
H = (1.0, 4.0)  # diagonal of the Hessian
STARTS = ((-3.0, -2.5), (3.0, 3.0), (-2.0, 3.0), (3.0, -3.0), (0.0, 0.0))


@dataclass
class Trajectory:
    start: tuple[float, float]
    points: torch.Tensor  # (steps + 1, 2)
    steps_in: int | None  # first t with excess <= tol, None if never
    bound_steps: int | None  # first t with the phase-1 bound <= tol


def _bisect(g, lo: float, hi: float, iters: int = 200) -> float:
    """Root of an increasing function ``g`` on [lo, hi] (g(lo) <= 0 <= g(hi))."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if g(mid) > 0:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def theoretical_optimum(kernel: Kernel, h: tuple[float, ...], a: tuple[float, ...], wd: float) -> tuple[float, ...]:
    """argmin f + (1/wd) K*(wd x) for f = 1/2 (x-a)^T diag(h) (x-a); elementwise kernels or LpNorm(p=2)."""
    if kernel.elementwise:

        def root(hi_: float, ai: float) -> float:
            def g(x: float) -> float:
                c = torch.tensor([hi_ * (ai - x)], dtype=torch.float64)
                return wd * x - kernel.direction(c).item()

            lo, hi = min(0.0, ai), max(0.0, ai)
            return _bisect(g, lo, hi)

        return tuple(root(hi_, ai) for hi_, ai in zip(h, a))
    if isinstance(kernel, LpNorm) and kernel.p == 2.0:
        radius = 1.0 / wd
        if math.hypot(*a) <= radius:
            return tuple(a)

        def point(mu: float) -> tuple[float, ...]:
            return tuple(hi_ * ai / (hi_ + mu) for hi_, ai in zip(h, a))

        mu = _bisect(lambda m: radius - math.hypot(*point(m)), 0.0, max(h) * math.hypot(*a) / radius)
        return point(mu)
    raise ValueError(f"no optimum solver for kernel {kernel.spec}")


def lr_schedule(step: int, lr: float, steps: int) -> float:
    """Cosine decay from ``lr`` to 0 over ``steps`` steps."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))


def _excess(x: torch.Tensor, norm: float, wd: float) -> torch.Tensor:
    return (torch.linalg.vector_norm(x, ord=norm, dim=-1) - 1.0 / wd).clamp_min(0.0)


def run_kernel(spec: str, norm: float | None, args: argparse.Namespace) -> list[Trajectory]:
    """Full-batch Lion-K from every start (one parameter per start, one optimizer), float64."""
    params = [torch.nn.Parameter(torch.tensor(s, dtype=torch.float64)) for s in STARTS]
    opt = Lion(params, lr=args.lr, betas=(args.beta1, args.beta2), weight_decay=args.wd, kernel=spec)
    a, h = torch.tensor(A, dtype=torch.float64), torch.tensor(H, dtype=torch.float64)
    paths = [[p.detach().clone()] for p in params]
    decay = [1.0]
    for t in range(args.steps):
        lr = lr_schedule(t, args.lr, args.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        for p in params:
            p.grad = h * (p.detach() - a)
        opt.step()
        decay.append(decay[-1] * (1.0 - lr * args.wd))
        for path, p in zip(paths, params):
            path.append(p.detach().clone())
    out = []
    for start, path in zip(STARTS, paths):
        points = torch.stack(path)
        steps_in = bound_steps = None
        if norm is not None:
            excess = _excess(points, norm, args.wd)
            inside = (excess <= args.tol).nonzero()
            steps_in = int(inside[0]) if len(inside) else None
            bound = torch.tensor(decay, dtype=torch.float64) * excess[0]
            within = (bound <= args.tol).nonzero()
            bound_steps = int(within[0]) if len(within) else None
        out.append(Trajectory(start, points, steps_in, bound_steps))
    return out


def _fmt(v: tuple[float, ...] | torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(x):+.4f}" for x in v) + ")"


_SET_LABEL = {math.inf: r"set $\|x\|_\infty \leq 1/wd$ (a box)", 2.0: r"set $\|x\|_2 \leq 1/wd$ (a ball)"}


def _legend_below(ax) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9, frameon=False)


def plot(results, optima, args: argparse.Namespace, path: Path) -> None:
    """One panel per kernel (trajectories over the contours of f, its set, argmin f and x*), and a sixth panel
    with each constrained run's excess e_t from the slowest start against the phase-1 bound."""
    plt = pyplot("toy")
    fig, axes = plt.subplots(2, 3, figsize=(13, 10.5), layout="constrained")
    lim = 3.5
    grid = torch.linspace(-lim, lim, 201, dtype=torch.float64)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    fval = 0.5 * (H[0] * (gx - A[0]) ** 2 + H[1] * (gy - A[1]) ** 2)
    r = 1.0 / args.wd
    colours = ["C0", "C1", "C2", "C4", "C6"]  # one per start; red is the theory's (set and x*)
    for ax, (label, _, norm), trajs, opt in zip(axes.flat, KERNELS, results, optima):
        ax.contour(gx.numpy(), gy.numpy(), fval.numpy(), levels=20, colors="0.8", linewidths=0.6)
        if norm == math.inf:
            ax.add_patch(plt.Rectangle((-r, -r), 2 * r, 2 * r, fill=False, ec="tab:red", lw=1.6, label=_SET_LABEL[norm]))
        elif norm == 2.0:
            ax.add_patch(plt.Circle((0, 0), r, fill=False, ec="tab:red", lw=1.6, label=_SET_LABEL[norm]))
        for traj, colour in zip(trajs, colours):
            pts = traj.points.numpy()
            ax.plot(pts[:, 0], pts[:, 1], lw=1.2, color=colour)
            ax.plot(*pts[0], "o", ms=5, color=colour)
        ax.plot([], [], "o-", color="0.4", ms=5, lw=1.2, label="a path per start (dot)")
        ax.plot(*A, "x", color="k", ms=9, mew=2, label="argmin f")
        ax.plot(*opt, "*", color="tab:red", ms=14, mec="k", label=r"$x^*$ = argmin f + K*(wd x)/wd")
        what = "no constraint set: a penalty" if norm is None else ("box" if norm == math.inf else "ball")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=f"{label}: {what}", xlabel="x1", ylabel="x2")
        _legend_below(ax)
    _plot_phase1(axes.flat[len(KERNELS)], results, args)
    fig.suptitle(f"Lion-K on f(x) = 1/2 (x-a)^T H (x-a), a = {A}, H = diag{H}; wd = {args.wd:g}, lr {args.lr:g} cosine to 0, "
                 f"{args.steps} steps")  # fmt: skip
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_phase1(ax, results, args: argparse.Namespace) -> None:
    """Excess e_t from the start slowest to enter the sets, per constrained kernel, against prod (1 - lr_s wd) e_0."""
    decay = [1.0]
    for t in range(args.steps):
        decay.append(decay[-1] * (1.0 - lr_schedule(t, args.lr, args.steps) * args.wd))
    decay_t = torch.tensor(decay, dtype=torch.float64)
    constrained = [trajs for (_, _, norm), trajs in zip(KERNELS, results) if norm is not None]
    far = max(range(len(STARTS)), key=lambda i: max(trajs[i].steps_in or 0 for trajs in constrained))
    last = 1
    bounds_drawn = set()
    for (label, _, norm), trajs in zip(KERNELS, results):
        if norm is None:
            continue
        excess = _excess(trajs[far].points, norm, args.wd)
        steps = torch.arange(len(excess))
        shown = excess > args.tol / 10
        ax.plot(steps[shown].numpy(), excess[shown].numpy(), lw=1.5, label=label)
        if norm not in bounds_drawn:
            bounds_drawn.add(norm)
            bound = decay_t * excess[0]
            ax.plot(steps.numpy(), bound.numpy(), "--", color="k" if norm == math.inf else "0.5", lw=1.2,
                    label=f"bound, {'box' if norm == math.inf else 'ball'}")  # fmt: skip
            within = (bound <= args.tol).nonzero()
            last = max(last, int(within[0]) if len(within) else args.steps)
    ax.axhline(args.tol, color="tab:red", lw=0.8, ls=":", label=f"--tol {args.tol:g}")
    ax.set(yscale="log", xlim=(0, min(args.steps, int(1.3 * last))), ylim=(args.tol / 10, None), xlabel="step t",
           ylabel="excess e_t = max(||x_t|| - 1/wd, 0)", title=f"phase 1, start {STARTS[far]}: excess vs bound")  # fmt: skip
    ax.grid(alpha=0.3)
    _legend_below(ax)


def run(args: argparse.Namespace) -> int:
    integer("--steps", args.steps, 1)
    number("--lr", args.lr, 0.0, low_open=True)
    number("--wd", args.wd, 0.0, low_open=True)
    if args.lr * args.wd > 1:
        raise CLIError(f"invalid --lr {args.lr:g} with --wd {args.wd:g}: need lr*wd <= 1 (each step multiplies x by 1 - lr*wd)")
    number("--beta1", args.beta1, 0.0, 1.0, high_open=True)
    number("--beta2", args.beta2, 0.0, 1.0, high_open=True)
    number("--tol", args.tol, 0.0, low_open=True)
    out = output_dir(args.out, ("toy.png",))
    pyplot("toy")  # fail early when matplotlib is missing
    results, optima = [], []
    print(f"f(x) = 1/2 (x-a)^T H (x-a), a = {A}, H = diag{H}; wd = {args.wd:g}, lr = {args.lr:g} (cosine to 0), {args.steps} steps")
    print(
        "optimum x* = argmin f(x) + (1/wd) K*(wd x); steps in = first t with excess <= tol; "
        "bound = first t with prod(1 - lr_s wd) e_0 <= tol"
    )
    for label, spec, norm in KERNELS:
        kernel = get_kernel(spec)
        optimum = theoretical_optimum(kernel, H, A, args.wd)
        trajs = run_kernel(spec, norm, args)
        results.append(trajs)
        optima.append(optimum)
        what = {math.inf: "box ||x||_inf <= 1/wd", 2.0: "ball ||x||_2 <= 1/wd", None: "no constraint set (penalty)"}[norm]
        print(f"\n{label} [{spec}]: {what}; x* = {_fmt(optimum)}")
        print(f"  {'start':<18} {'final x_T':<20} {'|x_T - x*|':>10} {'steps in':>9} {'bound':>7}")
        for traj in trajs:
            dist = float(torch.linalg.vector_norm(traj.points[-1] - torch.tensor(optimum, dtype=torch.float64)))
            steps_in = "-" if norm is None else (str(traj.steps_in) if traj.steps_in is not None else "never")
            bound = "-" if norm is None else (str(traj.bound_steps) if traj.bound_steps is not None else "never")
            print(f"  {_fmt(traj.start):<18} {_fmt(traj.points[-1]):<20} {dist:>10.2e} {steps_in:>9} {bound:>7}")
    png = out / "toy.png"
    plot(results, optima, args, png)
    print(f"\nwrote {png}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "toy",
        help="Lion-K trajectories on a 2-D constrained toy problem",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=3000, metavar="N", help="steps per run (default 3000)")
    parser.add_argument("--lr", type=float, metavar="X", default=0.02, help="peak lr, > 0, cosine-decayed to 0 (default 0.02)")
    parser.add_argument(
        "--wd", type=float, metavar="X", default=1.0, help="weight decay, > 0 with lr*wd <= 1: the set's radius is 1/wd (default 1)"
    )
    parser.add_argument("--beta1", type=float, metavar="X", default=0.9, help="Lion's beta1, in [0, 1) (default 0.9)")
    parser.add_argument("--beta2", type=float, metavar="X", default=0.99, help="Lion's beta2, in [0, 1) (default 0.99)")
    parser.add_argument(
        "--tol", type=float, metavar="X", default=1e-3, help="excess below which an iterate counts as inside, > 0 (default 1e-3)"
    )
    parser.add_argument(
        "--out", default=".", metavar="DIR", help="directory for toy.png, created if missing (default: the current directory)"
    )
    parser.set_defaults(func=run)
