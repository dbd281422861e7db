"""Losses computed from the last layer's outputs and the original batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from partita.models.layered import Activations

IGNORE_INDEX = -100


def causal_lm_loss(outputs: Activations, batch: Activations) -> torch.Tensor:
    """Next-token cross-entropy, mean over predicted tokens (``labels`` = the input ids)."""
    logits_bsv = outputs["logits"].float()
    shifted = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[:, 1:]
    return F.cross_entropy(
        logits_bsv.reshape(-1, logits_bsv.shape[-1]),
        shifted.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def token_classification_loss(outputs: Activations, batch: Activations) -> torch.Tensor:
    """Cross-entropy at every position with a label (masked LM, seq2seq targets)."""
    logits_bsv = outputs["logits"].float()
    return F.cross_entropy(
        logits_bsv.reshape(-1, logits_bsv.shape[-1]),
        batch["labels"].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def classification_loss(outputs: Activations, batch: Activations) -> torch.Tensor:
    """Cross-entropy of one label per sample (image classification)."""
    return F.cross_entropy(outputs["logits"].float(), batch["labels"])
