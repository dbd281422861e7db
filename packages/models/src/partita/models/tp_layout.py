"""How each layer type splits under tensor parallelism, as data the executor applies.

Names are submodule paths inside one layer. Column-parallel projections split their output
features (so attention heads and FFN columns are divided), row-parallel ones split their input
features and sum the partial outputs. Under Megatron sequence parallelism the modules in
``sequence_parallel`` (norms, dropouts) run on a sequence shard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TPLayout:
    colwise: tuple[str, ...] = ()
    rowwise: tuple[str, ...] = ()
    vocab_embedding: tuple[str, ...] = ()  # nn.Embedding split along the vocabulary
    vocab_head: tuple[str, ...] = ()  # nn.Linear producing logits, split along the vocabulary
    sequence_parallel: tuple[str, ...] = ()
    # Parameters whose last dimension indexes attention heads (T5's relative attention bias,
    # Swin's relative position table): split with the heads.
    head_parameters: tuple[str, ...] = ()
    # Under Ulysses, modules that attend over the whole sequence on their own terms (Swin's
    # shifted windows), called as ``m(q_bhsd, k_bhsd, v_bhsd, **per_head)``: the executor
    # exchanges sequence for heads around them instead of around the attention core. Their
    # keyword tensors (or None) index heads in dim 1 and are cut to this rank's heads.
    ulysses_exchange: tuple[str, ...] = ()
    # Modules that stay whole but, under tensor parallelism, see only this rank's heads
    # (Qwen3's per-head q/k norms after the column-parallel q/k projections): their gradient
    # is a partial sum over the group, as under sequence parallelism.
    head_local: tuple[str, ...] = ()
    replicated_note: str = ""  # what stays whole, in words, for docs and `partita describe`

    @property
    def holds_vocabulary(self) -> bool:
        """Whether the layer holds a vocabulary table, so it follows the plan's vocab strategy."""
        return bool(self.vocab_embedding or self.vocab_head)
