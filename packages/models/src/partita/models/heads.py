"""Reshapes between ``[batch, seq, heads * head_dim]`` and ``[batch, heads, seq, head_dim]``.

The head count is inferred from the tensor, so a tensor-parallel shard with fewer local heads
goes through the same code.
"""

from __future__ import annotations

import torch


def split_heads(x_bsh: torch.Tensor, head_dim: int) -> torch.Tensor:
    batch, seq, _ = x_bsh.shape
    return x_bsh.view(batch, seq, -1, head_dim).transpose(1, 2)


def merge_heads(x_bhsd: torch.Tensor) -> torch.Tensor:
    batch, _, seq, _ = x_bhsd.shape
    return x_bhsd.transpose(1, 2).reshape(batch, seq, -1)


def repeat_kv(x_bhsd: torch.Tensor, groups: int) -> torch.Tensor:
    """Grouped-query attention: each key/value head serves ``groups`` query heads."""
    if groups == 1:
        return x_bhsd
    return x_bhsd.repeat_interleave(groups, dim=1)
