"""Character-level corpora for ``compare`` and ``sweep``: loading, encoding, the train/validation split, batches.

The vocabulary is the sorted set of characters of the whole text; the first 90% of the encoded text is the
training split and the last 10% the validation split (nanoGPT's ``shakespeare_char`` preparation). A batch is
``batch_size`` windows of ``block_size + 1`` characters starting at uniform random offsets of a split; inputs
are the first ``block_size`` characters, targets the last ``block_size``.

Without a file, the default corpus is read from this machine's Python standard library: its top-level ``*.py``
files in sorted order, concatenated until :data:`STDLIB_BUDGET` characters. No download is needed, and the
same Python version gives the same text.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import CLIError

__all__ = ["STDLIB_BUDGET", "VAL_FRACTION", "Corpus", "load_corpus", "read_text_file", "stdlib_text"]

#: Characters of standard-library source in the default corpus (about the size of tiny shakespeare).
STDLIB_BUDGET = 1_000_000
#: Fraction of the text, at its end, held out for validation.
VAL_FRACTION = 0.1


def stdlib_text(budget: int = STDLIB_BUDGET) -> str:
    """The first ``budget`` characters of the sorted top-level ``*.py`` files of the standard library."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= budget:
            break
    return "".join(parts)[:budget]


@dataclass
class Corpus:
    """An encoded text: ``train`` and ``val`` are int64 tensors of character ids; ``chars`` is the vocabulary."""

    source: str
    chars: str
    train: Tensor
    val: Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def check_context(self, block_size: int) -> None:
        """Raise CLIError when a split is too short to hold one window of ``block_size + 1`` characters."""
        shortest = min(len(self.train), len(self.val))
        if shortest <= block_size + 1:
            raise CLIError(
                f"corpus {self.source} is too small for context {block_size}: its smaller split has {shortest} characters "
                f"(needs more than {block_size + 1})"
            )

    def batch(self, split: str, batch_size: int, block_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Inputs and targets, each ``(batch_size, block_size)``, from random windows of ``split`` ('train' or 'val')."""
        data = self.train if split == "train" else self.val
        starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        offsets = torch.arange(block_size + 1)
        windows = data[starts[:, None] + offsets]
        return windows[:, :-1], windows[:, 1:]


def read_text_file(path: str) -> str:
    """The contents of ``path``, which must be a regular file of UTF-8 text (no NUL bytes); else CLIError."""
    file = Path(path)
    if not file.exists():
        raise CLIError(f"--data {path}: file not found")
    if file.is_dir():
        raise CLIError(f"--data {path}: is a directory, not a UTF-8 text file")
    if not file.is_file():
        raise CLIError(f"--data {path}: is not a regular file (a UTF-8 text file is needed)")
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise CLIError(f"--data {path}: cannot be read ({err.strerror or type(err).__name__})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CLIError(f"--data {path}: is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})") from None
    if "\x00" in text:
        raise CLIError(f"--data {path}: contains NUL bytes (a binary file, not text)")
    return text


def load_corpus(path: str | None) -> Corpus:
    """Read ``path`` (a UTF-8 text file) or, when None, the standard-library corpus; encode and split it."""
    if path is None:
        text, source = stdlib_text(), f"python-stdlib ({STDLIB_BUDGET} chars from {sysconfig.get_paths()['stdlib']})"
    else:
        text, source = read_text_file(path), str(path)
    if len(text) < 2:
        raise CLIError(f"--data {source}: has fewer than 2 characters")
    chars = "".join(sorted(set(text)))
    index = {ch: i for i, ch in enumerate(chars)}
    ids = torch.tensor([index[ch] for ch in text], dtype=torch.int64)
    n_train = int(len(ids) * (1 - VAL_FRACTION))
    return Corpus(source=source, chars=chars, train=ids[:n_train], val=ids[n_train:])
