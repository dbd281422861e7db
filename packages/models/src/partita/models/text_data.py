"""Language-model batches from a local text file, tokenized with nothing downloaded.

Two tokenizers: raw UTF-8 bytes (ids 0-255, any vocabulary of at least 256 works), or a
byte-level BPE trained on the file itself with the ``tokenizers`` library (ids below the
model's vocabulary size). The text is cut into consecutive blocks of ``seq_len`` tokens;
batches walk the blocks in a seeded order and can resume from a position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal

import torch

from partita.models.layered import Activations

TokenizerKind = Literal["bytes", "bpe"]
BYTE_VOCAB = 256


def sample_text_path() -> Path:
    """A small English text shipped with the package, for demos and tests."""
    return Path(str(files("partita.models.data").joinpath("sample.txt")))


def tokenize_file(path: str | Path, *, kind: TokenizerKind, vocab_size: int) -> torch.Tensor:
    """The whole file as one 1-D tensor of token ids, each below ``vocab_size``."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{source}: cannot read as UTF-8 text: {error}") from None
    if not text:
        raise ValueError(f"{source}: the file is empty")
    if vocab_size < BYTE_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} is too small for byte-level tokens (>= 256)")
    if kind == "bytes":
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    if kind == "bpe":
        return torch.tensor(_train_bpe(text, vocab_size).encode(text).ids, dtype=torch.long)
    raise ValueError(f"unknown tokenizer {kind!r} (choose bytes or bpe)")


def _train_bpe(text: str, vocab_size: int):  # type: ignore[no-untyped-def]
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        [text], vocab_size=vocab_size, min_frequency=2, show_progress=False
    )
    return tokenizer


@dataclass
class TextBatches:
    """Causal-LM batches of ``batch_size`` blocks of ``seq_len`` tokens from a token stream."""

    tokens: torch.Tensor
    seq_len: int
    batch_size: int
    seed: int = 0
    position: int = 0  # batches already served: save it to resume exactly

    def __post_init__(self) -> None:
        num_blocks = self.tokens.numel() // self.seq_len
        if num_blocks < self.batch_size:
            raise ValueError(
                f"the text has {self.tokens.numel()} tokens: too few for one batch of "
                f"{self.batch_size} x {self.seq_len}"
            )
        blocks = self.tokens[: num_blocks * self.seq_len].view(num_blocks, self.seq_len)
        order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(self.seed))
        self._blocks = blocks[order]

    @property
    def batches_per_epoch(self) -> int:
        return self._blocks.shape[0] // self.batch_size

    def __iter__(self) -> Iterator[Activations]:
        return self

    def __next__(self) -> Activations:
        start = (self.position % self.batches_per_epoch) * self.batch_size
        input_ids = self._blocks[start : start + self.batch_size].clone()
        self.position += 1
        return {"input_ids": input_ids, "labels": input_ids.clone()}
