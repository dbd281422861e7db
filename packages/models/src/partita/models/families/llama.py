"""LLaMA style decoders: RMSNorm, rotary positions, GQA, SwiGLU.

One family for transformers' ``llama``, ``mistral``, ``qwen2`` and ``qwen3``: they differ only
in switches read from the config (``_projection_bias``, ``_mlp_bias``, ``_qk_norm``,
:func:`sliding_window`, :func:`rope_frequencies`), so each is the same modules with different
options, not a copy of the family.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from partita.formats.architectures.llama import (
    ARCHITECTURE,
    PRESETS,
    check_buildable,
    kv_heads,
    mlp_bias,
    projection_bias,
    qk_norm,
    rope_parameters,
    rope_type,
    sliding_window,
)
from partita.formats.architectures.llama import (
    head_dim as head_size,
)
from partita.models.attention import Attends
from partita.models.families._text import causal_lm_batch
from partita.models.families.base import (
    Family,
    StateDict,
    default_seq_len_through,
    describe_through,
)
from partita.models.heads import merge_heads, repeat_kv, split_heads
from partita.models.layered import Activations, LayeredModel, TiedParameters
from partita.models.losses import causal_lm_loss
from partita.models.tp_layout import TPLayout

# The config classes of the model types this family builds, by model_type.
CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
}


def _rope_theta(config: PretrainedConfig) -> float:
    rope = rope_parameters(config)
    return float(rope.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0))


def rope_frequencies(config: PretrainedConfig) -> tuple[torch.Tensor, float]:
    """(inverse frequencies ``[head_dim / 2]`` in float32 on the CPU, attention scaling), as
    transformers' rotary embedding computes them when it is built: the default rope as its
    ``compute_default_rope_parameters``, scaled ones with its own ``ROPE_INIT_FUNCTIONS``."""
    kind = rope_type(config)
    # On the CPU even when the model is built under a meta device context: the values are
    # needed, and some init functions make tensors without naming a device.
    with torch.device("cpu"):
        if kind != "default":
            inv_freq_d, scaling = ROPE_INIT_FUNCTIONS[kind](config, torch.device("cpu"))
            return inv_freq_d.float(), float(scaling)
        head_dim = head_size(config)
        steps_d = torch.arange(0, head_dim, 2, dtype=torch.float)
        return 1.0 / (_rope_theta(config) ** (steps_d / head_dim)), 1.0


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
    position_ids_bs: torch.Tensor, inv_freq_d: torch.Tensor, scaling: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' rotary cos/sin, computed in float32 like it; ``[batch, 1, seq, head_dim]``.

    Computed here from the positions instead of a buffer, so a model built on the meta
    device or cast to half precision still gets exact frequencies.
    """
    freqs_bsd = position_ids_bs[..., None].float() * inv_freq_d
    angles_bsd = torch.cat((freqs_bsd, freqs_bsd), dim=-1)
    cos_bsd, sin_bsd = angles_bsd.cos() * scaling, angles_bsd.sin() * scaling
    return cos_bsd.to(dtype)[:, None], sin_bsd.to(dtype)[:, None]


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
    def __init__(self, config: PretrainedConfig) -> None:
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
    def __init__(self, config: PretrainedConfig, window: int | None = None) -> None:
        super().__init__()
        hidden, head_dim = config.hidden_size, head_size(config)
        q_width = config.num_attention_heads * head_dim
        kv_width = kv_heads(config) * head_dim
        qkv_bias, o_bias = projection_bias(config)
        self.head_dim = head_dim
        self.window = window
        # A plain attribute, not a buffer: casting the model must not round the frequencies.
        self.inv_freq_d, self.attention_scaling = rope_frequencies(config)
        self.q_proj = nn.Linear(hidden, q_width, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_width, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_width, bias=qkv_bias)
        self.o_proj = nn.Linear(q_width, hidden, bias=o_bias)
        # Over head_dim, with one weight for every head: a tensor-parallel shard keeps it whole.
        self.q_norm = RMSNorm(head_dim, config.rms_norm_eps) if qk_norm(config) else None
        self.k_norm = RMSNorm(head_dim, config.rms_norm_eps) if qk_norm(config) else None
        self.attn_dropout = float(config.attention_dropout or 0.0)

    def forward(
        self, x_bsh: torch.Tensor, position_ids_bs: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        q_bhsd = split_heads(self.q_proj(x_bsh), self.head_dim)
        k_bhsd = split_heads(self.k_proj(x_bsh), self.head_dim)
        v_bhsd = split_heads(self.v_proj(x_bsh), self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q_bhsd, k_bhsd = self.q_norm(q_bhsd), self.k_norm(k_bhsd)
        if self.inv_freq_d.device != position_ids_bs.device:
            self.inv_freq_d = self.inv_freq_d.to(position_ids_bs.device)  # once, not per call
        cos, sin = rotary_cos_sin(
            position_ids_bs, self.inv_freq_d, self.attention_scaling, q_bhsd.dtype
        )
        q_bhsd, k_bhsd = apply_rotary(q_bhsd, cos, sin), apply_rotary(k_bhsd, cos, sin)
        # Local head counts come from the shapes, so a tensor-parallel shard works unchanged.
        groups = q_bhsd.shape[1] // k_bhsd.shape[1]
        # Passed only when set, so a core without the keyword still serves unwindowed models.
        sliding = {} if self.window is None else {"window": self.window}
        out_bhsd = self.core(
            q_bhsd,
            repeat_kv(k_bhsd, groups),
            repeat_kv(v_bhsd, groups),
            bias=bias_like(bias, q_bhsd),
            causal=True,
            scale=self.head_dim**-0.5,
            dropout_p=self.attn_dropout if self.training else 0.0,
            **sliding,
        )
        return self.o_proj(merge_heads(out_bhsd))


class LlamaMLP(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        hidden, ffn, bias = config.hidden_size, config.intermediate_size, mlp_bias(config)
        self.gate_proj = nn.Linear(hidden, ffn, bias=bias)
        self.up_proj = nn.Linear(hidden, ffn, bias=bias)
        self.down_proj = nn.Linear(ffn, hidden, bias=bias)

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        gated_bsf = nn.functional.silu(self.gate_proj(x_bsh)) * self.up_proj(x_bsh)
        return self.down_proj(gated_bsf)


class LlamaBlock(nn.Module):
    def __init__(self, config: PretrainedConfig, index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, sliding_window(config, index))
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
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, acts: Activations) -> Activations:
        return {"logits": self.lm_head(self.norm(acts["hidden"]))}


def check_config(config: PretrainedConfig) -> None:
    _check_model_type(config)
    check_buildable(config)


def _check_model_type(config: PretrainedConfig) -> None:
    expected = CONFIG_CLASSES.get(getattr(config, "model_type", ""))
    if expected is None or not isinstance(config, expected):
        raise ValueError(
            f"llama: expected a config of model_type {'/'.join(CONFIG_CLASSES)}, got "
            f"{type(config).__name__} (model_type {getattr(config, 'model_type', '?')!r})"
        )


def build(config: PretrainedConfig) -> LayeredModel:
    check_config(config)
    layers = config.num_hidden_layers
    embedding, head = LlamaEmbedding(config), LlamaHead(config)
    blocks = [LlamaBlock(config, i) for i in range(layers)]
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
            head_local=("self_attn.q_norm", "self_attn.k_norm") if qk_norm(config) else (),
            replicated_note=(
                "RMSNorm weights (Qwen3's per-head q/k norms included) replicated; tp must"
                " divide num_key_value_heads so k/v split by whole heads"
            ),
        ),
        "llama_head": TPLayout(vocab_head=("lm_head",), sequence_parallel=("norm",)),
    }


def reference_model(config: PretrainedConfig) -> PreTrainedModel:
    # transformers' own class for the model type (LlamaForCausalLM, Qwen2ForCausalLM, ...).
    return AutoModelForCausalLM.from_config(config)


def reference_outputs(
    model: PreTrainedModel, batch: Activations
) -> tuple[torch.Tensor, torch.Tensor]:
    extra = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    out = model(input_ids=batch["input_ids"], labels=batch["labels"], **extra)
    return out.logits, out.loss


def _names(config: PretrainedConfig) -> dict[str, str]:
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
    qkv_bias, o_bias = projection_bias(config)
    block += [f"{p}.bias" for p in projections[:3] if qkv_bias]
    block += ["self_attn.o_proj.bias"] if o_bias else []
    block += [f"{p}.bias" for p in mlp if mlp_bias(config)]
    block += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"] if qk_norm(config) else []
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
    model_types=tuple(CONFIG_CLASSES),
    unit="tokens",
    check_config=check_config,
    build=build,
    describe=describe_through(ARCHITECTURE),
    tp_layouts=tp_layouts,
    synthetic_batch=causal_lm_batch,
    reference_model=reference_model,
    reference_outputs=reference_outputs,
    from_hf_state_dict=from_hf_state_dict,
    to_hf_state_dict=to_hf_state_dict,
    default_seq_len=default_seq_len_through(ARCHITECTURE),
    presets=PRESETS,
)
