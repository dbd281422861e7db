"""T5 encoder-decoders (transformers ``t5``): relative position bias, RMS norms, shared vocabulary.

Layers: the encoder embedding, the encoder blocks, one bridge layer (the encoder's final norm,
which makes the encoder output the decoder cross-attends to, and the decoder's embedding of
``decoder_input_ids`` with the shared table), the decoder blocks and the head.

In transformers only block 0 of each stack owns ``relative_attention_bias``; the others reuse
the bias block 0 computed. Here the first encoder (decoder) block computes that bias and puts it
in the activations (``encoder_position_bias`` / ``decoder_position_bias``, shaped
``[1, heads, seq_q, seq_k]``: it does not depend on the sample), so a pipeline can cut anywhere
and the bias's gradient flows back to block 0 like any activation's. Being the only blocks with
a parameter, those two have their own layer types (``t5_*_first_block``).

The bias is computed from the token positions (``encoder_positions`` / ``decoder_positions``,
``[1, seq]``, made by the layer that embeds the tokens), not from the length of ``hidden``: under
sequence parallelism a block sees a shard of ``hidden`` while its attention covers the whole
sequence, so the bias must too.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, T5Config, T5ForConditionalGeneration

from partita.formats.architectures.t5 import ARCHITECTURE, PRESETS, inner_size, layer_plan
from partita.models.attention import Attends
from partita.models.families.base import (
    Family,
    StateDict,
    default_seq_len_through,
    describe_through,
)
from partita.models.heads import merge_heads, split_heads
from partita.models.layered import Activations, LayeredModel, TiedParameters
from partita.models.losses import IGNORE_INDEX, token_classification_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_family_config, require_positive


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # transformers' "gelu_new", written out as it does: torch's fused tanh GELU rounds
    # differently, enough to miss 1e-6 on the unscaled logits of T5 v1.1.
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


# dense_act_fn (what transformers derives from feed_forward_proj) -> the same function.
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": _gelu_new, "silu": F.silu}


def _scales_logits(config: T5Config) -> bool:
    # Original T5 rescales the decoder output by d_model**-0.5 before the tied head; v1.1
    # (saved with tie_word_embeddings false) does not. transformers keeps that as a flag.
    return bool(getattr(config, "scale_decoder_outputs", config.tie_word_embeddings))


def _decoder_start_token_id(config: T5Config) -> int:
    # transformers 5's T5Config sets the attribute only when the config.json names it; T5
    # starts decoding from the padding token, so a config without it falls back to that.
    start = getattr(config, "decoder_start_token_id", None)
    start = getattr(config, "pad_token_id", None) if start is None else start
    if start is None:
        raise ValueError("t5: decoder_start_token_id and pad_token_id are both unset")
    return int(start)


def shift_right(labels_bs: torch.Tensor, start: int, pad: int) -> torch.Tensor:
    """Decoder inputs from labels: the start token, then the labels but the last (as HF)."""
    shifted_bs = torch.full_like(labels_bs, start)
    shifted_bs[:, 1:] = labels_bs[:, :-1]
    return shifted_bs.masked_fill(shifted_bs == IGNORE_INDEX, pad)


def relative_position_bucket(
    relative_qk: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each key-minus-query distance: exact when small, logarithmic beyond."""
    buckets_qk = torch.zeros_like(relative_qk)
    if bidirectional:
        num_buckets //= 2
        buckets_qk += (relative_qk > 0).long() * num_buckets
        distance_qk = relative_qk.abs()
    else:  # the decoder looks back only; later keys share bucket 0 (and are masked anyway)
        distance_qk = -torch.min(relative_qk, torch.zeros_like(relative_qk))
    max_exact = num_buckets // 2
    log_ratio_qk = torch.log(distance_qk.float() / max_exact) / math.log(max_distance / max_exact)
    large_qk = max_exact + (log_ratio_qk * (num_buckets - max_exact)).long()
    large_qk = torch.min(large_qk, torch.full_like(large_qk, num_buckets - 1))
    return buckets_qk + torch.where(distance_qk < max_exact, distance_qk, large_qk)


def _mask_keys(bias_bhqk: torch.Tensor, attention_mask_bs: torch.Tensor | None) -> torch.Tensor:
    """The bias with padded keys set to the dtype's minimum (``attention_mask`` 0 = padding)."""
    if attention_mask_bs is None:
        return bias_bhqk
    keep_b11k = attention_mask_bs[:, None, None, :].bool()
    return torch.where(keep_b11k, bias_bhqk, torch.finfo(bias_bhqk.dtype).min)


def _as_grad_input(bias_1hqk: torch.Tensor) -> torch.Tensor:
    """The position bias as an input that needs a gradient, however it arrived.

    SDPA's CPU kernel depends on whether the mask needs a gradient. A bias that reaches a later
    block detached (a pipeline stage's input not marked ``requires_grad``) would take the other
    kernel and round differently from the unsplit model; this keeps every cut bit-identical.
    """
    if torch.is_grad_enabled() and not bias_1hqk.requires_grad:
        return bias_1hqk.detach().requires_grad_()
    return bias_1hqk


def _clamp_fp16(x_bsh: torch.Tensor) -> torch.Tensor:
    # transformers clamps after each sublayer in fp16 so overflows do not become inf.
    if x_bsh.dtype != torch.float16:
        return x_bsh
    limit = torch.finfo(torch.float16).max
    clamp = torch.where(torch.isinf(x_bsh).any(), limit - 1000, limit)
    return torch.clamp(x_bsh, min=-clamp, max=clamp)


class T5LayerNorm(nn.Module):
    """RMS norm without bias; the mean square is taken in fp32 (as transformers does)."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        variance_bs1 = x_bsh.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x_bsh = x_bsh * torch.rsqrt(variance_bs1 + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x_bsh = x_bsh.to(self.weight.dtype)
        return self.weight * x_bsh


class T5Attention(Attends):
    """Unscaled dot-product attention; the first block of a stack also owns the bias table."""

    def __init__(self, config: T5Config, *, relative_bias: bool, bidirectional: bool) -> None:
        super().__init__()
        hidden, inner = config.d_model, inner_size(config)
        self.head_dim = config.d_kv
        self.q = nn.Linear(hidden, inner, bias=False)
        self.k = nn.Linear(hidden, inner, bias=False)
        self.v = nn.Linear(hidden, inner, bias=False)
        self.o = nn.Linear(inner, hidden, bias=False)
        self.attn_dropout = config.dropout_rate
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        if relative_bias:  # [buckets, heads]: split with the heads under tensor parallelism
            self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_heads)

    def position_bias(self, positions_1s: torch.Tensor) -> torch.Tensor:
        """``[1, local heads, seq, seq]`` from the bucket of each key-minus-query distance."""
        positions_s = positions_1s.reshape(-1)
        relative_qk = positions_s[None, :] - positions_s[:, None]
        buckets_qk = relative_position_bucket(
            relative_qk,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return self.relative_attention_bias(buckets_qk).permute(2, 0, 1).unsqueeze(0)

    def forward(
        self,
        x_bsh: torch.Tensor,
        kv_bsh: torch.Tensor,
        *,
        bias: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        q = split_heads(self.q(x_bsh), self.head_dim)
        k = split_heads(self.k(kv_bsh), self.head_dim)
        v = split_heads(self.v(kv_bsh), self.head_dim)
        dropout_p = self.attn_dropout if self.training else 0.0
        out_bhsd = self.core(q, k, v, bias=bias, causal=causal, scale=1.0, dropout_p=dropout_p)
        return self.o(merge_heads(out_bhsd))


class T5FeedForward(nn.Module):
    """``wo(act(wi x))``, or gated (T5 v1.1): ``wo(act(wi_0 x) * wi_1 x)``."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        hidden, ffn = config.d_model, config.d_ff
        self.gated = config.is_gated_act
        if self.gated:
            self.wi_0 = nn.Linear(hidden, ffn, bias=False)
            self.wi_1 = nn.Linear(hidden, ffn, bias=False)
        else:
            self.wi = nn.Linear(hidden, ffn, bias=False)
        self.wo = nn.Linear(ffn, hidden, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = _ACTIVATIONS[config.dense_act_fn]

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        if self.gated:
            inner_bsf = self.act(self.wi_0(x_bsh)) * self.wi_1(x_bsh)
        else:
            inner_bsf = self.act(self.wi(x_bsh))
        return self.wo(self.dropout(inner_bsf))


class T5Embedding(nn.Module):
    """Encoder token embedding; passes on the decoder's ids and the padding mask."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.start_token_id = _decoder_start_token_id(config)
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0

    def forward(self, acts: Activations) -> Activations:
        if "decoder_attention_mask" in acts:
            raise ValueError("t5: decoder_attention_mask is unsupported (decoder is causal only)")
        input_ids_bs = acts["input_ids"]
        out = {
            "hidden": self.dropout(self.embed_tokens(input_ids_bs)),
            "encoder_positions": _positions(input_ids_bs),
            "decoder_input_ids": self._decoder_input_ids(acts),
        }
        if "attention_mask" in acts:
            out["attention_mask"] = acts["attention_mask"]
        return out

    def _decoder_input_ids(self, acts: Activations) -> torch.Tensor:
        if "decoder_input_ids" in acts:
            return acts["decoder_input_ids"]
        if "labels" not in acts:
            raise ValueError("t5: the batch needs decoder_input_ids or labels")
        return shift_right(acts["labels"], self.start_token_id, self.pad_token_id)


def _positions(ids_bs: torch.Tensor) -> torch.Tensor:
    """``[1, seq]``: every sample's token positions (they do not depend on the sample)."""
    return torch.arange(ids_bs.shape[1], device=ids_bs.device).unsqueeze(0)


class T5EncoderBlock(nn.Module):
    def __init__(self, config: T5Config, *, first: bool) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.first = first
        self.self_attn_norm = T5LayerNorm(config.d_model, eps)
        self.self_attn = T5Attention(config, relative_bias=first, bidirectional=True)
        self.self_attn_dropout = nn.Dropout(config.dropout_rate)
        self.ffn_norm = T5LayerNorm(config.d_model, eps)
        self.ffn = T5FeedForward(config)
        self.ffn_dropout = nn.Dropout(config.dropout_rate)

    def forward(self, acts: Activations) -> Activations:
        x_bsh = acts["hidden"]
        if self.first:
            bias_1hss = self.self_attn.position_bias(acts["encoder_positions"])
            acts = {**acts, "encoder_position_bias": bias_1hss}
        position_bias = _as_grad_input(acts["encoder_position_bias"])
        bias = _mask_keys(position_bias, acts.get("attention_mask"))
        normed_bsh = self.self_attn_norm(x_bsh)
        attn_bsh = self.self_attn(normed_bsh, normed_bsh, bias=bias, causal=False)
        x_bsh = _clamp_fp16(x_bsh + self.self_attn_dropout(attn_bsh))
        x_bsh = _clamp_fp16(x_bsh + self.ffn_dropout(self.ffn(self.ffn_norm(x_bsh))))
        return {**acts, "hidden": x_bsh}


class T5DecoderEmbedding(nn.Module):
    """The bridge: finishes the encoder (final norm) and embeds the decoder's inputs."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.encoder_dropout = nn.Dropout(config.dropout_rate)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)  # shared; see build
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, acts: Activations) -> Activations:
        decoder_ids_bs = acts["decoder_input_ids"]
        out = {
            "hidden": self.dropout(self.embed_tokens(decoder_ids_bs)),
            "decoder_positions": _positions(decoder_ids_bs),
            "encoder_hidden": self.encoder_dropout(self.final_layer_norm(acts["hidden"])),
        }
        if "attention_mask" in acts:  # the cross-attention masks padded encoder positions
            out["attention_mask"] = acts["attention_mask"]
        return out


class T5DecoderBlock(nn.Module):
    def __init__(self, config: T5Config, *, first: bool) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.first = first
        self.self_attn_norm = T5LayerNorm(config.d_model, eps)
        self.self_attn = T5Attention(config, relative_bias=first, bidirectional=False)
        self.self_attn_dropout = nn.Dropout(config.dropout_rate)
        self.cross_attn_norm = T5LayerNorm(config.d_model, eps)
        self.cross_attn = T5Attention(config, relative_bias=False, bidirectional=True)
        self.cross_attn_dropout = nn.Dropout(config.dropout_rate)
        self.ffn_norm = T5LayerNorm(config.d_model, eps)
        self.ffn = T5FeedForward(config)
        self.ffn_dropout = nn.Dropout(config.dropout_rate)

    def forward(self, acts: Activations) -> Activations:
        x_bsh, encoder_bsh = acts["hidden"], acts["encoder_hidden"]
        if self.first:
            bias_1hss = self.self_attn.position_bias(acts["decoder_positions"])
            acts = {**acts, "decoder_position_bias": bias_1hss}
        normed_bsh = self.self_attn_norm(x_bsh)
        attn_bsh = self.self_attn(
            normed_bsh, normed_bsh, bias=_as_grad_input(acts["decoder_position_bias"]), causal=True
        )
        x_bsh = _clamp_fp16(x_bsh + self.self_attn_dropout(attn_bsh))
        cross_bsh = self.cross_attn(
            self.cross_attn_norm(x_bsh),
            encoder_bsh,
            bias=self._cross_bias(acts, x_bsh),
            causal=False,
        )
        x_bsh = _clamp_fp16(x_bsh + self.cross_attn_dropout(cross_bsh))
        x_bsh = _clamp_fp16(x_bsh + self.ffn_dropout(self.ffn(self.ffn_norm(x_bsh))))
        return {**acts, "hidden": x_bsh}

    @staticmethod
    def _cross_bias(acts: Activations, x_bsh: torch.Tensor) -> torch.Tensor | None:
        # Cross-attention has no position bias, only the encoder's padding mask.
        mask_bs = acts.get("attention_mask")
        if mask_bs is None:
            return None
        zeros_111k = x_bsh.new_zeros(1, 1, 1, mask_bs.shape[1])
        return _mask_keys(zeros_111k, mask_bs)


class T5Head(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.output_scale = config.d_model**-0.5 if _scales_logits(config) else None

    def forward(self, acts: Activations) -> Activations:
        x_bsh = self.dropout(self.final_layer_norm(acts["hidden"]))
        if self.output_scale is not None:
            x_bsh = x_bsh * self.output_scale
        return {"logits": self.lm_head(x_bsh)}


def check_config(config: PretrainedConfig) -> None:
    require_family_config(config, T5Config, "t5")
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers"):
        require_positive(getattr(config, name), name)
    require_positive(config.num_decoder_layers, "num_decoder_layers")
    if config.dense_act_fn not in _ACTIVATIONS:
        raise ValueError(
            f"t5: feed_forward_proj {config.feed_forward_proj!r} is unsupported (supported: "
            "relu, gelu, gelu_new, silu and their gated- forms, e.g. gated-gelu)"
        )
    buckets, max_distance = (
        config.relative_attention_num_buckets,
        config.relative_attention_max_distance,
    )
    # The logarithmic buckets start at buckets // 2 (decoder); a max distance at or below that
    # divides by log(1) = 0.
    if buckets < 4 or max_distance <= buckets // 2:
        raise ValueError(
            f"t5: relative_attention_num_buckets {buckets} must be at least 4 and below twice "
            f"relative_attention_max_distance {max_distance}"
        )
    _decoder_start_token_id(config)


def build(config: PretrainedConfig) -> LayeredModel:
    check_config(config)
    n_enc, n_dec = config.num_layers, config.num_decoder_layers
    embedding, bridge, head = T5Embedding(config), T5DecoderEmbedding(config), T5Head(config)
    encoder = [T5EncoderBlock(config, first=i == 0) for i in range(n_enc)]
    decoder = [T5DecoderBlock(config, first=i == 0) for i in range(n_dec)]
    bridge_at, head_at = n_enc + 1, n_enc + n_dec + 2
    # One shared vocabulary table: encoder input, decoder input and (when tied) the head.
    bridge.embed_tokens.weight = embedding.embed_tokens.weight
    shared = ["layers.0.embed_tokens.weight", f"layers.{bridge_at}.embed_tokens.weight"]
    if config.tie_word_embeddings:
        head.lm_head.weight = embedding.embed_tokens.weight
        shared.append(f"layers.{head_at}.lm_head.weight")
    names, types = layer_plan(config)
    return LayeredModel(
        family="t5",
        layer_names=names,
        layer_types=types,
        layers=[embedding, *encoder, bridge, *decoder, head],
        loss_fn=token_classification_loss,
        tied=[TiedParameters(tuple(shared))],
        config=config,
    )


def tp_layouts(config: PretrainedConfig) -> dict[str, TPLayout]:
    ffn_in = ("ffn.wi_0", "ffn.wi_1") if config.is_gated_act else ("ffn.wi",)
    attn = ("q", "k", "v")
    encoder = TPLayout(
        colwise=(*(f"self_attn.{p}" for p in attn), *ffn_in),
        rowwise=("self_attn.o", "ffn.wo"),
        sequence_parallel=("self_attn_norm", "self_attn_dropout", "ffn_norm", "ffn_dropout"),
        replicated_note="RMS norms replicated",
    )
    decoder = TPLayout(
        colwise=(*(f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in attn), *ffn_in),
        rowwise=("self_attn.o", "cross_attn.o", "ffn.wo"),
        sequence_parallel=(
            "self_attn_norm",
            "self_attn_dropout",
            "cross_attn_norm",
            "cross_attn_dropout",
            "ffn_norm",
            "ffn_dropout",
        ),
        replicated_note="RMS norms replicated",
    )
    bias = ("self_attn.relative_attention_bias.weight",)
    return {
        "t5_embedding": TPLayout(vocab_embedding=("embed_tokens",), sequence_parallel=("dropout",)),
        "t5_encoder_first_block": replace(encoder, head_parameters=bias),
        "t5_encoder_block": encoder,
        "t5_decoder_embedding": TPLayout(
            vocab_embedding=("embed_tokens",),
            sequence_parallel=("final_layer_norm", "encoder_dropout", "dropout"),
            replicated_note="encoder final RMS norm replicated",
        ),
        "t5_decoder_first_block": replace(decoder, head_parameters=bias),
        "t5_decoder_block": decoder,
        "t5_head": TPLayout(
            vocab_head=("lm_head",), sequence_parallel=("final_layer_norm", "dropout")
        ),
    }


def synthetic_batch(
    config: PretrainedConfig, batch_size: int, seq_len: int, generator: torch.Generator
) -> Activations:
    input_ids = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    labels = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=generator)
    start, pad = _decoder_start_token_id(config), config.pad_token_id or 0
    return {
        "input_ids": input_ids,
        "labels": labels,
        "decoder_input_ids": shift_right(labels, start, pad),
    }


def reference_model(config: PretrainedConfig) -> PreTrainedModel:
    return T5ForConditionalGeneration(config)


def reference_outputs(
    model: PreTrainedModel, batch: Activations
) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        decoder_input_ids=batch.get("decoder_input_ids"),
        labels=batch["labels"],
        use_cache=False,
    )
    return out.logits, out.loss


def _key_pairs(config: T5Config) -> list[tuple[str, str]]:
    """(ours, transformers) for every parameter but the shared vocabulary table."""
    n_enc, n_dec = config.num_layers, config.num_decoder_layers
    ffn = ("wi_0", "wi_1", "wo") if config.is_gated_act else ("wi", "wo")
    bridge_at, head_at = n_enc + 1, n_enc + n_dec + 2
    pairs = [
        (f"layers.{bridge_at}.final_layer_norm.weight", "encoder.final_layer_norm.weight"),
        (f"layers.{head_at}.final_layer_norm.weight", "decoder.final_layer_norm.weight"),
    ]
    stacks = (
        ("encoder", 1, n_enc, ("self_attn", "ffn")),
        ("decoder", bridge_at + 1, n_dec, ("self_attn", "cross_attn", "ffn")),
    )
    for stack, offset, count, sublayers in stacks:
        for i in range(count):
            dst, src = f"layers.{offset + i}.", f"{stack}.block.{i}.layer."
            for index, sub in enumerate(sublayers):
                pairs.append((f"{dst}{sub}_norm.weight", f"{src}{index}.layer_norm.weight"))
                pairs += _sublayer_pairs(f"{dst}{sub}.", f"{src}{index}.", sub, ffn)
            if i == 0:
                bias = "relative_attention_bias.weight"
                pairs.append((f"{dst}self_attn.{bias}", f"{src}0.SelfAttention.{bias}"))
    return pairs


def _sublayer_pairs(
    dst: str, src: str, sublayer: str, ffn: tuple[str, ...]
) -> list[tuple[str, str]]:
    hf_module = {
        "self_attn": "SelfAttention",
        "cross_attn": "EncDecAttention",
        "ffn": "DenseReluDense",
    }
    linears = ffn if sublayer == "ffn" else ("q", "k", "v", "o")
    return [(f"{dst}{p}.weight", f"{src}{hf_module[sublayer]}.{p}.weight") for p in linears]


def _shared_keys(config: T5Config) -> tuple[str, str, str]:
    n_enc, n_dec = config.num_layers, config.num_decoder_layers
    return (
        "layers.0.embed_tokens.weight",
        f"layers.{n_enc + 1}.embed_tokens.weight",
        f"layers.{n_enc + n_dec + 2}.lm_head.weight",
    )


# transformers keeps one "shared" table (also reachable as encoder/decoder.embed_tokens and, tied,
# lm_head); a deduplicated state dict or gradient map may hold it under any of those names.
_HF_SHARED = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def from_hf_state_dict(hf: StateDict, config: PretrainedConfig) -> StateDict:
    shared = next((hf[key] for key in _HF_SHARED if key in hf), None)
    if shared is None:
        shared = hf["shared.weight"]  # a CheckpointTensors raises a clear error
    encoder_key, decoder_key, head_key = _shared_keys(config)
    lm_head = shared if config.tie_word_embeddings else hf["lm_head.weight"]
    if config.tie_word_embeddings and _separate_head(hf, shared):
        # transformers unties such a checkpoint (T5 v1.1, flan-t5) only while loading it; its
        # config still says tied, and a model built from the config cannot express that.
        raise ValueError(
            "t5: the checkpoint's lm_head.weight differs from the shared embedding; untied "
            "heads (T5 v1.1 checkpoints) are unsupported"
        )
    ours = {encoder_key: shared, decoder_key: shared, head_key: lm_head}
    ours.update({dst: hf[src] for dst, src in _key_pairs(config)})
    return ours


def _separate_head(hf: StateDict, shared: torch.Tensor) -> bool:
    head = hf.get("lm_head.weight")
    return head is not None and not torch.equal(head, shared)


def to_hf_state_dict(ours: StateDict, config: PretrainedConfig) -> StateDict:
    encoder_key, _, head_key = _shared_keys(config)
    hf = {key: ours[encoder_key] for key in _HF_SHARED}
    hf["lm_head.weight"] = ours[head_key]
    hf.update({src: ours[dst] for dst, src in _key_pairs(config)})
    return hf


FAMILY = Family(
    name="t5",
    model_types=("t5",),
    unit="tokens",
    check_config=check_config,
    build=build,
    describe=describe_through(ARCHITECTURE),
    tp_layouts=tp_layouts,
    synthetic_batch=synthetic_batch,
    reference_model=reference_model,
    reference_outputs=reference_outputs,
    from_hf_state_dict=from_hf_state_dict,
    to_hf_state_dict=to_hf_state_dict,
    default_seq_len=default_seq_len_through(ARCHITECTURE),
    presets=PRESETS,
)
