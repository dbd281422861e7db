"""LLaMA style decoders (transformers ``llama``): RMSNorm, rotary positions, GQA, SwiGLU."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel

from partita.formats import LayerDescription, ModelDescription
from partita.models.attention import Attends
from partita.models.families._text import causal_lm_batch
from partita.models.families.base import Family, StateDict
from partita.models.heads import merge_heads, repeat_kv, split_heads
from partita.models.layered import Activations, LayeredModel, TiedParameters
from partita.models.losses import causal_lm_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_divisible, require_family_config, require_positive

FP32_BYTES = 4

_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096}
PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": {
        "model_type": "llama",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,  # grouped-query attention, 2 query heads per kv head
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "use_cache": False,
    },
    "llama2-7b": {
        **_LLAMA2,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rms_norm_eps": 1e-5,
    },
    "llama2-13b": {
        **_LLAMA2,
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "rms_norm_eps": 1e-5,
    },
    "llama2-70b": {
        **_LLAMA2,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-5,
    },
}


def _head_dim(config: LlamaConfig) -> int:
    # transformers lets head_dim differ from hidden_size // heads; q/k/v widths follow it.
    return config.head_dim or config.hidden_size // config.num_attention_heads


def _kv_heads(config: LlamaConfig) -> int:
    return config.num_key_value_heads or config.num_attention_heads


def _rope_parameters(config: LlamaConfig) -> dict[str, Any]:
    """transformers >= 5 keeps rope settings in ``rope_parameters`` (older: ``rope_scaling``)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return dict(rope or {})


def _rope_theta(config: LlamaConfig) -> float:
    rope = _rope_parameters(config)
    return float(rope.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0))


def padding_bias(attention_mask_bs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, seq]`` 1/0 keep mask -> additive ``[batch, 1, 1, seq]`` bias over the keys."""
    keep_b11s = attention_mask_bs[:, None, None, :].bool()
    zero = torch.zeros((), dtype=dtype, device=attention_mask_bs.device)
    return torch.where(keep_b11s, zero, torch.finfo(dtype).min)


def bias_like(bias: torch.Tensor | None, q_bhsd: torch.Tensor) -> torch.Tensor | None:
    """The bias in the queries' dtype (under autocast the projections run in half precision)."""
    if bias is None or bias.dtype == q_bhsd.dtype:
        return bias
    # float32's minimum overflows to -inf in half precision; clamp so masked scores stay finite.
    return bias.clamp(min=torch.finfo(q_bhsd.dtype).min).to(q_bhsd.dtype)


def rotary_cos_sin(
    position_ids_bs: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' default rope, computed in float32 like it; ``[batch, 1, seq, head_dim]``.

    Computed here from the positions instead of a buffer, so a model built on the meta
    device or cast to half precision still gets exact frequencies.
    """
    steps_d = torch.arange(0, head_dim, 2, dtype=torch.float, device=position_ids_bs.device)
    inv_freq_d = 1.0 / (theta ** (steps_d / head_dim))
    freqs_bsd = position_ids_bs[..., None].float() * inv_freq_d
    angles_bsd = torch.cat((freqs_bsd, freqs_bsd), dim=-1)
    return angles_bsd.cos().to(dtype)[:, None], angles_bsd.sin().to(dtype)[:, None]


def _rotate_half(x_bhsd: torch.Tensor) -> torch.Tensor:
    first, second = x_bhsd.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x_bhsd: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x_bhsd * cos + _rotate_half(x_bhsd) * sin


class RMSNorm(nn.Module):
    """transformers' LlamaRMSNorm: normalise in float32, scale in the input dtype."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        x_f32 = x_bsh.float()
        variance_bs1 = x_f32.pow(2).mean(-1, keepdim=True)
        return self.weight * (x_f32 * torch.rsqrt(variance_bs1 + self.eps)).to(x_bsh.dtype)


class LlamaEmbedding(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )

    def forward(self, acts: Activations) -> Activations:
        input_ids_bs = acts["input_ids"]
        if "position_ids" in acts:
            position_ids_bs = acts["position_ids"].expand_as(input_ids_bs)
        else:
            batch, seq = input_ids_bs.shape
            positions_s = torch.arange(seq, device=input_ids_bs.device)
            position_ids_bs = positions_s.repeat(batch, 1)
        hidden_bsh = self.embed_tokens(input_ids_bs)
        # Positions travel with the hidden states (not recomputed from the local length), so
        # a block that sees a sequence shard still rotates by the global positions.
        out = {"hidden": hidden_bsh, "position_ids": position_ids_bs}
        if "attention_mask" in acts:
            out["attention_bias"] = padding_bias(acts["attention_mask"], hidden_bsh.dtype)
        return out


class LlamaAttention(Attends):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        hidden, head_dim = config.hidden_size, _head_dim(config)
        q_width = config.num_attention_heads * head_dim
        kv_width = _kv_heads(config) * head_dim
        bias = config.attention_bias
        self.head_dim = head_dim
        self.rope_theta = _rope_theta(config)
        self.q_proj = nn.Linear(hidden, q_width, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_width, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_width, bias=bias)
        self.o_proj = nn.Linear(q_width, hidden, bias=bias)
        self.attn_dropout = float(config.attention_dropout or 0.0)

    def forward(
        self, x_bsh: torch.Tensor, position_ids_bs: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        q_bhsd = split_heads(self.q_proj(x_bsh), self.head_dim)
        k_bhsd = split_heads(self.k_proj(x_bsh), self.head_dim)
        v_bhsd = split_heads(self.v_proj(x_bsh), self.head_dim)
        cos, sin = rotary_cos_sin(position_ids_bs, self.head_dim, self.rope_theta, q_bhsd.dtype)
        q_bhsd, k_bhsd = apply_rotary(q_bhsd, cos, sin), apply_rotary(k_bhsd, cos, sin)
        # Local head counts come from the shapes, so a tensor-parallel shard works unchanged.
        groups = q_bhsd.shape[1] // k_bhsd.shape[1]
        out_bhsd = self.core(
            q_bhsd,
            repeat_kv(k_bhsd, groups),
            repeat_kv(v_bhsd, groups),
            bias=bias_like(bias, q_bhsd),
            causal=True,
            scale=self.head_dim**-0.5,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        return self.o_proj(merge_heads(out_bhsd))


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        hidden, ffn, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(hidden, ffn, bias=bias)
        self.up_proj = nn.Linear(hidden, ffn, bias=bias)
        self.down_proj = nn.Linear(ffn, hidden, bias=bias)

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        gated_bsf = nn.functional.silu(self.gate_proj(x_bsh)) * self.up_proj(x_bsh)
        return self.down_proj(gated_bsf)


class LlamaBlock(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, acts: Activations) -> Activations:
        x_bsh = acts["hidden"]
        attended_bsh = self.self_attn(
            self.input_layernorm(x_bsh), acts["position_ids"], acts.get("attention_bias")
        )
        x_bsh = x_bsh + attended_bsh
        x_bsh = x_bsh + self.mlp(self.post_attention_layernorm(x_bsh))
        return {**acts, "hidden": x_bsh}


class LlamaHead(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, acts: Activations) -> Activations:
        return {"logits": self.lm_head(self.norm(acts["hidden"]))}


def check_config(config: PretrainedConfig) -> None:
    require_family_config(config, LlamaConfig, "llama")
    for value, name in (
        (config.hidden_size, "hidden_size"),
        (config.num_hidden_layers, "num_hidden_layers"),
        (config.num_attention_heads, "num_attention_heads"),
        (config.intermediate_size, "intermediate_size"),
        (config.vocab_size, "vocab_size"),
    ):
        require_positive(value, name)
    require_divisible(
        config.num_attention_heads, _kv_heads(config), "num_attention_heads", "num_key_value_heads"
    )
    if _head_dim(config) % 2:
        raise ValueError(f"llama: head_dim {_head_dim(config)} must be even for rotary positions")
    if config.hidden_act != "silu":
        raise ValueError(f"llama: hidden_act {config.hidden_act!r} is unsupported (only 'silu')")
    _check_rope(config)


def _check_rope(config: LlamaConfig) -> None:
    rope = _rope_parameters(config)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(
            f"llama: rope scaling {rope_type!r} is unsupported (only the default rotary positions)"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("llama: partial_rotary_factor other than 1.0 is unsupported")


def build(config: PretrainedConfig) -> LayeredModel:
    check_config(config)
    layers = config.num_hidden_layers
    embedding, head = LlamaEmbedding(config), LlamaHead(config)
    blocks = [LlamaBlock(config) for _ in range(layers)]
    tied: list[TiedParameters] = []
    if config.tie_word_embeddings:
        head.lm_head.weight = embedding.embed_tokens.weight
        names = ("layers.0.embed_tokens.weight", f"layers.{layers + 1}.lm_head.weight")
        tied.append(TiedParameters(names))
    return LayeredModel(
        family="llama",
        layer_names=["embedding", *(f"blocks.{i}" for i in range(layers)), "head"],
        layer_types=["llama_embedding", *(["llama_block"] * layers), "llama_head"],
        layers=[embedding, *blocks, head],
        loss_fn=causal_lm_loss,
        tied=tied,
        config=config,
    )


def _block_params(config: LlamaConfig) -> int:
    h, f = config.hidden_size, config.intermediate_size
    q_width = config.num_attention_heads * _head_dim(config)
    kv_width = _kv_heads(config) * _head_dim(config)
    params = 2 * h * (q_width + kv_width) + 3 * h * f + 2 * h  # projections, MLP, 2 norms
    if config.attention_bias:
        params += q_width + 2 * kv_width + h
    if config.mlp_bias:
        params += 2 * f + h
    return params


def describe(config: PretrainedConfig, seq_len: int, name: str) -> ModelDescription:
    # Rotary positions have no table, so seq_len may exceed max_position_embeddings (the
    # length the model was trained at); quality there is the user's concern, not the plan's.
    check_config(config)
    h, a, f, v, s = (
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        config.vocab_size,
        seq_len,
    )
    q_width = a * _head_dim(config)
    kv_width = _kv_heads(config) * _head_dim(config)
    tied = config.tie_word_embeddings
    # Matmul FLOPs (2 per multiply-add): q/o of width a*head_dim, k/v of kv_heads*head_dim,
    # three SwiGLU matmuls; attention scores and mixing counted dense (causality not skipped).
    block_fwd = 2 * s * h * (2 * q_width + 2 * kv_width) + 6 * s * h * f + 4 * s * s * q_width
    # Saved for backward, in elements: both norms' inputs and outputs (4h), rotated q and the
    # kv heads repeated to q's width plus the attention output (4 q_width), the SwiGLU
    # gate, up, silu and product (4f), and SDPA's per-head log-sum-exp. An estimate; the
    # profiler measures.
    block_act = s * (4 * h + 4 * q_width + 4 * f) + a * s
    common = {"config": config, "s": s}
    layers = [
        _layer(
            "embedding", "embedding", "llama_embedding", params=v * h, fwd=0, act=s * h, **common
        ),
        *(
            _layer(
                f"blocks.{i}",
                "block",
                "llama_block",
                params=_block_params(config),
                fwd=block_fwd,
                act=block_act,
                **common,
            )
            for i in range(config.num_hidden_layers)
        ),
        _layer(
            "head",
            "head",
            "llama_head",
            params=h + (0 if tied else v * h),
            fwd=2 * s * h * v,
            act=2 * s * h + s * v,
            **common,
        ),
    ]
    return ModelDescription(
        name=name,
        family="llama",
        hidden_size=h,
        num_heads=a,
        num_kv_heads=_kv_heads(config),
        ffn_size=f,
        vocab_size=v,
        num_labels=0,
        seq_len=s,
        activation_bytes_per_element=FP32_BYTES,
        layers=tuple(layers),
        source={"model_type": "llama", "tied_embeddings": str(tied).lower()},
    )


def _layer(
    name: str,
    kind: str,
    layer_type: str,
    *,
    config: LlamaConfig,
    s: int,
    params: int,
    fwd: float,
    act: float,
) -> LayerDescription:
    is_block = kind == "block"
    # Output: the hidden states (the int64 position ids and any [1, seq] padding bias that
    # travel with them are negligible next to seq * hidden); the head outputs logits.
    width = config.vocab_size if kind == "head" else config.hidden_size
    return LayerDescription(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        layer_type=layer_type,
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads if is_block else 0,
        num_kv_heads=_kv_heads(config) if is_block else 0,
        ffn_size=config.intermediate_size if is_block else 0,
        seq_len=s,
        params=params,
        forward_flops_per_sample=float(fwd),
        backward_flops_per_sample=float(2 * fwd),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(width * s * FP32_BYTES),
    )


def tp_layouts(config: PretrainedConfig) -> dict[str, TPLayout]:
    return {
        "llama_embedding": TPLayout(vocab_embedding=("embed_tokens",)),
        "llama_block": TPLayout(
            colwise=(
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
            ),
            rowwise=("self_attn.o_proj", "mlp.down_proj"),
            sequence_parallel=("input_layernorm", "post_attention_layernorm"),
            replicated_note=(
                "RMSNorm weights replicated; tp must divide num_key_value_heads so k/v split by"
                " whole heads"
            ),
        ),
        "llama_head": TPLayout(vocab_head=("lm_head",), sequence_parallel=("norm",)),
    }


def reference_model(config: PretrainedConfig) -> PreTrainedModel:
    return LlamaForCausalLM(config)


def reference_outputs(
    model: PreTrainedModel, batch: Activations
) -> tuple[torch.Tensor, torch.Tensor]:
    extra = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    out = model(input_ids=batch["input_ids"], labels=batch["labels"], **extra)
    return out.logits, out.loss


def _names(config: LlamaConfig) -> dict[str, str]:
    """Our state_dict key -> transformers' key, for every parameter (tied head included)."""
    last = config.num_hidden_layers + 1
    names = {
        "layers.0.embed_tokens.weight": "model.embed_tokens.weight",
        f"layers.{last}.norm.weight": "model.norm.weight",
        f"layers.{last}.lm_head.weight": "lm_head.weight",
    }
    block = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    projections = [f"self_attn.{p}_proj" for p in "qkvo"]
    mlp = [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    block += [f"{p}.weight" for p in (*projections, *mlp)]
    block += [f"{p}.bias" for p in projections if config.attention_bias]
    block += [f"{p}.bias" for p in mlp if config.mlp_bias]
    for i in range(config.num_hidden_layers):
        names.update({f"layers.{i + 1}.{key}": f"model.layers.{i}.{key}" for key in block})
    return names


def from_hf_state_dict(hf: StateDict, config: PretrainedConfig) -> StateDict:
    names = _names(config)
    last = config.num_hidden_layers + 1
    head_key = f"layers.{last}.lm_head.weight"
    # A tied checkpoint (and a tied model's gradients) holds only the embedding.
    if config.tie_word_embeddings:
        names[head_key] = "model.embed_tokens.weight"
    return {ours: hf[theirs] for ours, theirs in names.items()}


def to_hf_state_dict(ours: StateDict, config: PretrainedConfig) -> StateDict:
    return {theirs: ours[key] for key, theirs in _names(config).items()}


FAMILY = Family(
    name="llama",
    model_types=("llama",),
    unit="tokens",
    check_config=check_config,
    build=build,
    describe=describe,
    tp_layouts=tp_layouts,
    synthetic_batch=causal_lm_batch,
    reference_model=reference_model,
    reference_outputs=reference_outputs,
    from_hf_state_dict=from_hf_state_dict,
    to_hf_state_dict=to_hf_state_dict,
    default_seq_len=lambda config: min(config.max_position_embeddings, 4096),
    presets=PRESETS,
)
