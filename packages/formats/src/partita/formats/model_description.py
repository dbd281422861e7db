"""``partita.model_description``: a model's layers, shapes, parameters and analytic costs.

Torch-free: the simulator reads it, ``partita.models`` writes it. ``layers`` are in execution
order. Per-sample quantities are for one sample of ``seq_len`` tokens (or patches) in the
element size ``activation_bytes_per_element``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from partita.formats.common import Family, LayerKind
from partita.formats.schema import at_least, count_from

FORMAT = "partita.model_description"
VERSION = 2


@dataclass(frozen=True)
class LayerDescription:
    name: str
    kind: LayerKind
    layer_type: str
    hidden_size: int = field(metadata=count_from(1))
    num_heads: int = field(metadata=count_from(0))
    num_kv_heads: int = field(metadata=count_from(0))
    ffn_size: int = field(metadata=count_from(0))
    seq_len: int = field(metadata=count_from(1))
    params: int = field(metadata=at_least(0))  # may pass 2^31 (a large vocabulary table)
    forward_flops_per_sample: float = field(metadata=at_least(0))
    backward_flops_per_sample: float = field(metadata=at_least(0))
    activation_bytes_per_sample: float = field(metadata=at_least(0))
    output_bytes_per_sample: float = field(metadata=at_least(0))
    # A block that uses the vocabulary table (T5's decoder input embedding, which shares the
    # embedding's table): it runs under ``plan.vocab``'s tensor parallelism and without
    # sequence parallelism, like the embedding and head; its plan entry gives only its data
    # parallelism and checkpointing.
    vocab_parallel: bool = False
    # Bytes per sample the loss keeps from forward to backward in fp32 whatever the compute
    # precision (the softmax of the head's logits, split with the vocabulary under vocab
    # tensor parallelism); 0 for layers without a loss. Not in activation_bytes_per_sample,
    # which scales with the compute precision. Added in version 2 (0 in version 1 files).
    loss_bytes_per_sample: float = field(default=0.0, metadata=at_least(0))
    # Of forward_flops_per_sample, the attention core's (scores and mixing, dense: every
    # query-key pair), and what a kernel that skips masked blocks computes (causal: about
    # half). The simulator prices the rest as matrix multiplications. 0 when the layer has
    # no attention or the writer did not split it out. Added in version 2.
    attention_flops_per_sample: float = field(default=0.0, metadata=at_least(0))
    attention_kernel_flops_per_sample: float = field(default=0.0, metadata=at_least(0))


@dataclass(frozen=True)
class ModelDescription:
    name: str
    family: Family
    hidden_size: int = field(metadata=count_from(1))
    num_heads: int = field(metadata=count_from(1))
    num_kv_heads: int = field(metadata=count_from(1))
    ffn_size: int = field(metadata=count_from(1))
    vocab_size: int = field(metadata=count_from(0))
    num_labels: int = field(metadata=count_from(0))
    seq_len: int = field(metadata=count_from(1))
    activation_bytes_per_element: int = field(metadata=count_from(1))
    layers: tuple[LayerDescription, ...]
    source: dict[str, str] = field(default_factory=dict)
    # The layers holding a copy of one vocabulary table (``vocab_size x hidden_size``: tied
    # input and output embeddings, T5's shared table), in model order; empty when none is
    # shared. The first holder's ``params`` count the table, the others' do not. Pipeline
    # stages that hold a copy each keep it and sum its gradient with the others every step.
    shared_vocabulary: tuple[str, ...] = ()

    @property
    def blocks(self) -> tuple[LayerDescription, ...]:
        """The layers a plan gives a strategy each (everything but embedding and head)."""
        return tuple(layer for layer in self.layers if layer.kind == "block")

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)
