"""Pieces more than one family uses."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from partita.models.layered import Activations


def causal_lm_batch(
    config: PretrainedConfig, batch_size: int, seq_len: int, generator: torch.Generator
) -> Activations:
    """Random token ids; the labels are the ids themselves (the loss shifts them)."""
    input_ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone()}
