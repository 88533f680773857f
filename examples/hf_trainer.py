"""Lion in a Hugging Face Trainer: pass the optimizer and its scheduler as ``optimizers=(Lion(...), scheduler)``.

A tiny GPT-2 built from a config (no download) learns a synthetic sequence task on CPU:

    python examples/hf_trainer.py --max-steps 60

Lion's lr is 3-10x below AdamW's and its weight decay 3-10x above, keeping lr * weight_decay
(docs/migrating-from-adamw.md). The Trainer's own ``learning_rate``/``weight_decay`` arguments are
ignored when ``optimizers=`` is given.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, get_cosine_schedule_with_warmup

from lionk import Lion


class CountingSequences(torch.utils.data.Dataset):
    """Sequences start, start+1, ... (mod vocab): the next token is predictable from the previous one."""

    def __init__(self, n: int, length: int, vocab: int, seed: int = 0):
        starts = torch.randint(0, vocab, (n, 1), generator=torch.Generator().manual_seed(seed))
        self.ids = (starts + torch.arange(length)) % vocab

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    vocab = 32
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    optimizer = Lion(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=args.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=max(1, args.max_steps // 10), num_training_steps=args.max_steps)
    with tempfile.TemporaryDirectory() as out:
        training_args = TrainingArguments(
            output_dir=out,
            max_steps=args.max_steps,
            per_device_train_batch_size=16,
            logging_steps=max(1, args.max_steps // 5),
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model, args=training_args, train_dataset=CountingSequences(512, 16, vocab), optimizers=(optimizer, scheduler)
        )
        trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print("logged training losses:", ", ".join(f"{loss:.3f}" for loss in losses))
    return losses


if __name__ == "__main__":
    main()
