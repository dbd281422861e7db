"""How each layer type splits under tensor parallelism, as data the executor applies.

Names are submodule paths inside one layer. Column-parallel projections split their output
features (so attention heads and FFN columns are divided), row-parallel ones split their input
features and sum the partial outputs. Under Megatron sequence parallelism the modules in
``sequence_parallel`` (norms, dropouts) run on a sequence shard, and a ``whole_sequence``
stretch runs on the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WholeSequence:
    """A stretch of a layer that needs the whole sequence under Megatron sequence parallelism
    (Swin's shifted windows: the window partition reorders the whole feature map).

    The executor all-gathers the (first) input of ``enter`` along the sequence and splits the
    output of ``leave`` back to this rank's shard; the column- and row-parallel projections
    under the ``inside`` paths run as without sequence parallelism, on the whole sequence.
    """

    enter: str
    leave: str
    inside: tuple[str, ...]


@dataclass(frozen=True)
class TPLayout:
    colwise: tuple[str, ...] = ()
    rowwise: tuple[str, ...] = ()
    vocab_embedding: tuple[str, ...] = ()  # nn.Embedding split along the vocabulary
    vocab_head: tuple[str, ...] = ()  # nn.Linear producing logits, split along the vocabulary
    sequence_parallel: tuple[str, ...] = ()
    whole_sequence: tuple[WholeSequence, ...] = ()
    # Parameters whose last dimension indexes attention heads (T5's relative attention bias,
    # Swin's relative position table): split with the heads.
    head_parameters: tuple[str, ...] = ()
    replicated_note: str = ""  # what stays whole, in words, for docs and `partita describe`

    @property
    def holds_vocabulary(self) -> bool:
        """Whether the layer holds a vocabulary table, so it follows the plan's vocab strategy."""
        return bool(self.vocab_embedding or self.vocab_head)
