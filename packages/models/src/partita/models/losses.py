"""Losses computed from the last layer's outputs and the original batch.

Each takes the cross-entropy it applies as ``cross_entropy`` (``F.cross_entropy`` by default),
so that whoever splits the logits (the executor's vocabulary-parallel head) can pass one that
works on its shard, without the model knowing.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from partita.models.layered import Activations

IGNORE_INDEX = -100


class CrossEntropy(Protocol):
    """Mean cross-entropy of fp32 logits ``[N, C]`` against targets ``[N]``, skipping
    ``ignore_index`` targets (``F.cross_entropy``'s contract)."""

    def __call__(
        self, logits_nc: torch.Tensor, target_n: torch.Tensor, *, ignore_index: int
    ) -> torch.Tensor: ...


def _cross_entropy(
    logits_nc: torch.Tensor, target_n: torch.Tensor, *, ignore_index: int
) -> torch.Tensor:
    return F.cross_entropy(logits_nc, target_n, ignore_index=ignore_index)


def causal_lm_loss(
    outputs: Activations, batch: Activations, cross_entropy: CrossEntropy = _cross_entropy
) -> torch.Tensor:
    """Next-token cross-entropy, mean over predicted tokens (``labels`` = the input ids)."""
    logits_bsv = outputs["logits"].float()
    shifted = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[:, 1:]
    return cross_entropy(
        logits_bsv.reshape(-1, logits_bsv.shape[-1]),
        shifted.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def token_classification_loss(
    outputs: Activations, batch: Activations, cross_entropy: CrossEntropy = _cross_entropy
) -> torch.Tensor:
    """Cross-entropy at every position with a label (masked LM, seq2seq targets)."""
    logits_bsv = outputs["logits"].float()
    return cross_entropy(
        logits_bsv.reshape(-1, logits_bsv.shape[-1]),
        batch["labels"].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def classification_loss(
    outputs: Activations, batch: Activations, cross_entropy: CrossEntropy = _cross_entropy
) -> torch.Tensor:
    """Cross-entropy of one label per sample (image classification)."""
    return cross_entropy(outputs["logits"].float(), batch["labels"], ignore_index=IGNORE_INDEX)
