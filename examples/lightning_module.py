"""Lion in PyTorch Lightning: return it (and a per-step schedule) from ``configure_optimizers``.

A small regression model trained on CPU:

    python examples/lightning_module.py --max-steps 200
"""

from __future__ import annotations

import argparse
import math
import tempfile

import lightning as L
import torch

from lionk import Lion


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 3e-4, weight_decay: float = 1.0, warmup: int = 10, total: int = 200):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, prog_bar=False)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = Lion(self.parameters(), lr=hp.lr, betas=(0.9, 0.99), weight_decay=hp.weight_decay)

        def warmup_cosine(step: int) -> float:  # multiplier of the base lr, stepped every optimizer step
            if step < hp.warmup:
                return (step + 1) / hp.warmup
            progress = min(1.0, (step - hp.warmup) / max(1, hp.total - hp.warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=200)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    x = torch.randn(1024, 8)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    model = Regressor(total=args.max_steps)
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            max_steps=args.max_steps,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        trainer.fit(model, loader)
    loss = float(trainer.callback_metrics["train_loss"])
    print(f"final training loss: {loss:.4f}")
    return loss


if __name__ == "__main__":
    main()
