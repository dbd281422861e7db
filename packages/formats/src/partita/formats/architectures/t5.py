"""T5 encoder-decoders (transformers ``t5``): relative position bias, RMS norms, shared vocabulary.

Layers: the encoder embedding, the encoder blocks, one bridge layer (the encoder's final norm and
the decoder's embedding of ``decoder_input_ids`` with the shared table), the decoder blocks and
the head. The first block of each stack owns the relative position bias table
(``t5_*_first_block``); the bridge looks tokens up in the shared table, so it runs
vocab-parallel.
"""

from __future__ import annotations

from typing import Any

from partita.formats.architectures.attention_cost import full_attention, with_attention
from partita.formats.architectures.base import Architecture
from partita.formats.architectures.config_view import ConfigView
from partita.formats.model_description import LayerDescription, ModelDescription

FP32_BYTES = 4
ID_BYTES = 8  # int64 token ids carried to the bridge layer
# The [1, seq] positions layers pass on are per batch, not per sample: left out of the sizes.

_ORIGINAL_T5 = {
    "model_type": "t5",
    "vocab_size": 32128,
    "d_kv": 64,
    "feed_forward_proj": "relu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "n_positions": 512,  # as in the published config.json; our default sequence length
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
PRESETS: dict[str, dict[str, object]] = {
    "t5-tiny": {
        **_ORIGINAL_T5,
        "vocab_size": 512,
        "d_model": 64,
        "d_kv": 16,
        "num_heads": 4,
        "d_ff": 128,
        "num_layers": 2,
        "num_decoder_layers": 2,
        # Few buckets and a short max distance, so a 32-token batch reaches every bucket kind
        # (exact, logarithmic and clamped).
        "relative_attention_num_buckets": 16,
        "relative_attention_max_distance": 16,
        "n_positions": 32,
        "dropout_rate": 0.0,
    },
    "t5-base": {
        **_ORIGINAL_T5,
        "d_model": 768,
        "num_heads": 12,
        "d_ff": 3072,
        "num_layers": 12,
        "num_decoder_layers": 12,
    },
    "t5-large": {
        **_ORIGINAL_T5,
        "d_model": 1024,
        "num_heads": 16,
        "d_ff": 4096,
        "num_layers": 24,
        "num_decoder_layers": 24,
    },
}


def _is_gated_act(config: ConfigView) -> bool:
    # transformers derives it from feed_forward_proj ("gated-gelu"), unless the config names it.
    return str(config.feed_forward_proj).split("-")[0] == "gated"


# transformers' T5Config defaults, for the fields the description reads. T5Config has no
# n_positions (the default sequence length reads it when a config.json carries it).
DEFAULTS = {
    "t5": {
        "vocab_size": 32128,
        "d_model": 512,
        "d_kv": 64,
        "d_ff": 2048,
        "num_layers": 6,
        "num_decoder_layers": lambda config: config.num_layers,  # None: as many as the encoder
        "num_heads": 8,
        "relative_attention_num_buckets": 32,
        "feed_forward_proj": "relu",
        "is_gated_act": _is_gated_act,
        # transformers 5 ties T5's head whatever the file says (see describe).
        "tie_word_embeddings": True,
    }
}


def inner_size(config: Any) -> int:
    """The attention width: heads x ``d_kv`` (which need not be ``d_model / heads``)."""
    return int(config.num_heads * config.d_kv)


def layer_plan(config: Any) -> tuple[list[str], list[str]]:
    """Layer names and types, in execution order."""
    n_enc, n_dec = config.num_layers, config.num_decoder_layers
    names = [
        "embedding",
        *(f"encoder.{i}" for i in range(n_enc)),
        "decoder_embedding",
        *(f"decoder.{i}" for i in range(n_dec)),
        "head",
    ]
    types = [
        "t5_embedding",
        "t5_encoder_first_block",
        *(["t5_encoder_block"] * (n_enc - 1)),
        "t5_decoder_embedding",
        "t5_decoder_first_block",
        *(["t5_decoder_block"] * (n_dec - 1)),
        "t5_head",
    ]
    return names, types


def check(config: ConfigView) -> None:
    config.positive(
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_heads",
        "num_layers",
        "num_decoder_layers",
        "relative_attention_num_buckets",
    )
    proj = config.feed_forward_proj
    parts = proj.split("-") if isinstance(proj, str) else []
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(
            f"{config.source}: feed_forward_proj must be ACT or gated-ACT (e.g. relu, "
            f"gated-gelu), got {proj!r}"
        )


def describe(config: ConfigView, seq_len: int, name: str) -> ModelDescription:
    check(config)
    d, h, v, s = config.d_model, config.num_heads, config.vocab_size, seq_len
    tied = bool(config.tie_word_embeddings)  # always, as transformers: ARCHITECTURE.forced
    costs = _BlockCosts(config, s)
    names, types = layer_plan(config)
    hidden_out = s * d * FP32_BYTES
    bias_out = h * s * s * FP32_BYTES  # the [1, h, s, s] position bias, counted per sample
    rows: list[tuple[str, int, float, float, float]] = [
        # kind, params, forward FLOPs, saved elements, output bytes
        ("embedding", v * d, 0, s * d, hidden_out + s * ID_BYTES),
        *(
            ("block", *costs.encoder(first=i == 0), hidden_out + bias_out + s * ID_BYTES)
            for i in range(config.num_layers)
        ),
        # The bridge saves the norm's input and output (the encoder output every
        # cross-attention reads; counted once here).
        ("block", d, 0, 2 * s * d, 2 * hidden_out),
        *(
            ("block", *costs.decoder(first=i == 0), 2 * hidden_out + bias_out)
            for i in range(config.num_decoder_layers)
        ),
        ("head", d + (0 if tied else v * d), 2 * s * d * v, 3 * s * d, s * v * FP32_BYTES),
    ]
    layers = [
        _layer(layer_name, layer_type, config, s, *row)
        for layer_name, layer_type, row in zip(names, types, rows, strict=True)
    ]
    # Every attention carries the relative position bias, which keeps kernels from skipping
    # the decoder's masked pairs: they compute every pair. A decoder block attends twice.
    one = full_attention(s, s, inner_size(config))
    two = (2 * one[0], 2 * one[1])
    layers = [
        with_attention(x, two if "decoder" in x.layer_type else one)
        if x.layer_type.startswith(("t5_encoder", "t5_decoder_first", "t5_decoder_block"))
        else x
        for x in layers
    ]
    return ModelDescription(
        name=name,
        family="t5",
        hidden_size=d,
        num_heads=h,
        num_kv_heads=h,
        ffn_size=config.d_ff,
        vocab_size=v,
        num_labels=0,
        seq_len=s,
        activation_bytes_per_element=FP32_BYTES,
        layers=tuple(layers),
        source={
            "model_type": "t5",
            "tied_embeddings": str(tied).lower(),
            "feed_forward_proj": config.feed_forward_proj,
            "d_kv": str(config.d_kv),
            "encoder_layers": str(config.num_layers),
            "decoder_layers": str(config.num_decoder_layers),
        },
    )


class _BlockCosts:
    """Parameters, forward FLOPs and saved elements of encoder and decoder blocks.

    Encoder and decoder run the same ``seq_len``. FLOPs count matmuls (2 per multiply-add),
    attention scores and mixing dense; the decoder's cross-attention costs as much as its
    self-attention at equal lengths. Saved elements for backward, an estimate the profiler
    replaces: per sublayer its input and norm output (2 s d); per attention q, k, v and output
    (4 s inner) and SDPA's log-sum-exp (h s); the FFN's 2 (gated: 4) [s, d_ff] tensors; per
    self-attention the [h, s, s] bias SDPA saves (the first block's is also what it passes on).
    The bias is the same for every sample, so this overstates it at micro-batches above 1.
    """

    def __init__(self, config: ConfigView, s: int) -> None:
        d, h, f, inner = config.d_model, config.num_heads, config.d_ff, inner_size(config)
        ffn_mats = 3 if config.is_gated_act else 2
        self.bias_params = config.relative_attention_num_buckets * h
        self.attn_params = 4 * d * inner + d  # q, k, v, o and the sublayer's norm
        self.ffn_params = ffn_mats * d * f + d
        self.attn_fwd = 2 * s * 4 * d * inner + 4 * s * s * inner
        self.ffn_fwd = 2 * s * ffn_mats * d * f
        self.attn_act = 2 * s * d + 4 * s * inner + h * s
        self.ffn_act = 2 * s * d + (4 if config.is_gated_act else 2) * s * f
        self.self_bias_act = h * s * s

    def encoder(self, *, first: bool) -> tuple[int, float, float]:
        params = self.attn_params + self.ffn_params + (self.bias_params if first else 0)
        act = self.attn_act + self.self_bias_act + self.ffn_act
        return params, self.attn_fwd + self.ffn_fwd, act

    def decoder(self, *, first: bool) -> tuple[int, float, float]:
        params = 2 * self.attn_params + self.ffn_params + (self.bias_params if first else 0)
        act = 2 * self.attn_act + self.self_bias_act + self.ffn_act
        return params, 2 * self.attn_fwd + self.ffn_fwd, act


def _layer(
    name: str,
    layer_type: str,
    config: ConfigView,
    s: int,
    kind: str,
    params: int,
    fwd: float,
    act: float,
    out_bytes: float,
) -> LayerDescription:
    attends = layer_type.endswith("block")
    return LayerDescription(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        layer_type=layer_type,
        hidden_size=config.d_model,
        num_heads=config.num_heads if attends else 0,
        num_kv_heads=config.num_heads if attends else 0,
        ffn_size=config.d_ff if attends else 0,
        seq_len=s,
        params=params,
        forward_flops_per_sample=float(fwd),
        backward_flops_per_sample=float(2 * fwd),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(out_bytes),
    )


ARCHITECTURE = Architecture(
    family="t5",
    defaults=DEFAULTS,
    describe=describe,
    # Relative positions set no limit; published configs carry the trained length (512).
    default_seq_len=lambda config: int(getattr(config, "n_positions", None) or 512),
    presets=PRESETS,
    size_keys={
        "layers": "num_layers",
        "hidden": "d_model",
        "heads": "num_heads",
        "ffn": "d_ff",
        "vocab": "vocab_size",
    },
    vocab_blocks=frozenset({"t5_decoder_embedding"}),
    derived=frozenset({"num_decoder_layers"}),
    # transformers' T5Config ties the head whatever the file says (a false there only stops
    # the decoder output scaling), and the models package builds what transformers builds.
    forced={"tie_word_embeddings": True},
)
