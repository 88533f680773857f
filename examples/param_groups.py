"""timm-style parameter groups for Lion, in plain torch: no weight decay on norms and biases.

timm's ``param_groups_weight_decay`` puts every 1-d parameter (biases, norm scales and shifts) and
the names a model lists in ``no_weight_decay()`` in a group with ``weight_decay=0``. With Lion the
decay matters more than with AdamW: it sets the box ``|x| <= 1/weight_decay`` that Lion keeps each
weight in (Chen, Liu, Liang, Liu, ICLR 2024), which makes no sense for a norm's scale or a bias.

    python examples/param_groups.py
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import torch

from lionk import Lion


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float, no_weight_decay: Iterable[str] = ()) -> list[dict]:
    """Two groups: weight_decay=0 for 1-d parameters, biases and the names in ``no_weight_decay``; the rest decayed."""
    skip = set(no_weight_decay)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class SmallConvNet(torch.nn.Module):
    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 8))  # 2-d, but listed in no_weight_decay() as timm models do
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, classes)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(x) + self.pos_embed))


def main(argv: list[str] | None = None) -> Lion:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--weight-decay", type=float, default=1.0)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = SmallConvNet()
    groups = param_groups_weight_decay(model, args.weight_decay, model.no_weight_decay())
    optimizer = Lion(groups, lr=args.lr, betas=(0.9, 0.99))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        print(f"weight_decay={group['weight_decay']}: {', '.join(names[id(p)] for p in group['params'])}")

    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")
    return optimizer


if __name__ == "__main__":
    main()
