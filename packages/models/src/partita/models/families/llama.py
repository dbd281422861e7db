"""LLaMA style decoders: RMSNorm, rotary positions, GQA, SwiGLU.

One family for transformers' ``llama``, ``mistral``, ``qwen2`` and ``qwen3``: they differ only
in switches read from the config (``_projection_bias``, ``_mlp_bias``, ``_qk_norm``,
:func:`sliding_window`, :func:`rope_frequencies`), so each is the same modules with different
options, not a copy of the family.
"""

from __future__ import annotations

from typing import Any

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

from partita.formats import LayerDescription, ModelDescription
from partita.models.attention import Attends
from partita.models.families._attention_cost import causal_pairs, with_attention
from partita.models.families._text import causal_lm_batch
from partita.models.families.base import Family, StateDict
from partita.models.heads import merge_heads, repeat_kv, split_heads
from partita.models.layered import Activations, LayeredModel, TiedParameters
from partita.models.losses import causal_lm_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_divisible, require_positive

FP32_BYTES = 4

_LLAMA2 = {"model_type": "llama", "vocab_size": 32000, "max_position_embeddings": 4096}
_TINY = {
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
}
# Llama 3.1's sizes and rope (meta-llama/Llama-3.1-{8B,70B,405B} config.json): 128K positions
# by "llama3" rope scaling of an 8K-trained model.
_LLAMA3 = {
    "model_type": "llama",
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "num_key_value_heads": 8,
}
# Qwen2.5 (Qwen/Qwen2.5-{7B,72B} config.json): biased q/k/v, sliding window configured but off.
_QWEN25 = {
    "model_type": "qwen2",
    "vocab_size": 152064,
    "max_position_embeddings": 131072,
    "rope_theta": 1000000.0,
    "use_sliding_window": False,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
}
PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": {"model_type": "llama", **_TINY},
    # Every block slides (Mistral), with a window shorter than the default sequence.
    "mistral-tiny": {"model_type": "mistral", **_TINY, "head_dim": 16, "sliding_window": 8},
    # Biased q/k/v, tied head, only the second block sliding (max_window_layers).
    "qwen2-tiny": {
        "model_type": "qwen2",
        **_TINY,
        "use_sliding_window": True,
        "sliding_window": 8,
        "max_window_layers": 1,
        "tie_word_embeddings": True,
    },
    # Per-head q/k RMSNorm, head_dim wider than hidden_size // heads.
    "qwen3-tiny": {"model_type": "qwen3", **_TINY, "head_dim": 32},
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
    "llama3-8b": {
        **_LLAMA3,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
    },
    "llama3-70b": {
        **_LLAMA3,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
    },
    "llama3-405b": {
        **_LLAMA3,
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "num_hidden_layers": 126,
        "num_attention_heads": 128,
    },
    # mistralai/Mistral-7B-v0.1 config.json: every layer attends over a 4096-token window.
    "mistral-7b": {
        "model_type": "mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
    },
    "qwen2.5-7b": {
        **_QWEN25,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-6,
    },
    "qwen2.5-72b": {
        **_QWEN25,
        "hidden_size": 8192,
        "intermediate_size": 29568,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "max_window_layers": 80,
        "rms_norm_eps": 1e-5,
    },
}


# The config classes of the model types this family builds, by model_type.
CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
}
# Rope types whose frequencies are fixed by the config. transformers' "dynamic" and
# "longrope" recompute them from the longest position of each call (dynamic also keeps the
# longest seen so far), which a block holding a sequence shard cannot know; refused.
STATIC_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


def _head_dim(config: PretrainedConfig) -> int:
    # transformers lets head_dim differ from hidden_size // heads; q/k/v widths follow it.
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _kv_heads(config: PretrainedConfig) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def _projection_bias(config: PretrainedConfig) -> tuple[bool, bool]:
    """(q/k/v bias, o bias): Qwen2 always biases q/k/v and never o; the others follow
    ``attention_bias`` (absent from Mistral's config: no bias)."""
    if config.model_type == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


def _mlp_bias(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "mlp_bias", False))


def _qk_norm(config: PretrainedConfig) -> bool:
    """Qwen3 normalises each query and key head (RMSNorm over head_dim) before rotating."""
    return config.model_type == "qwen3"


def sliding_window(config: PretrainedConfig, layer: int) -> int | None:
    """The attention window of block ``layer``, as transformers decides it: Qwen2/Qwen3 list
    per layer in ``layer_types`` (built from ``use_sliding_window`` and ``max_window_layers``),
    Mistral slides every layer when ``sliding_window`` is set, LLaMA never slides."""
    if config.model_type == "llama":
        return None
    layer_types = getattr(config, "layer_types", None)
    if config.model_type != "mistral" and layer_types is not None:
        return config.sliding_window if layer_types[layer] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


def _rope_parameters(config: PretrainedConfig) -> dict[str, Any]:
    """transformers >= 5 keeps rope settings in ``rope_parameters`` (older: ``rope_scaling``)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return dict(rope or {})


def _rope_type(config: PretrainedConfig) -> str:
    rope = _rope_parameters(config)
    return str(rope.get("rope_type", rope.get("type", "default")))


def _rope_theta(config: PretrainedConfig) -> float:
    rope = _rope_parameters(config)
    return float(rope.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0))


def rope_frequencies(config: PretrainedConfig) -> tuple[torch.Tensor, float]:
    """(inverse frequencies ``[head_dim / 2]`` in float32 on the CPU, attention scaling), as
    transformers' rotary embedding computes them when it is built: the default rope as its
    ``compute_default_rope_parameters``, scaled ones with its own ``ROPE_INIT_FUNCTIONS``."""
    rope_type = _rope_type(config)
    # On the CPU even when the model is built under a meta device context: the values are
    # needed, and some init functions make tensors without naming a device.
    with torch.device("cpu"):
        if rope_type != "default":
            inv_freq_d, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"))
            return inv_freq_d.float(), float(scaling)
        head_dim = _head_dim(config)
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
        hidden, head_dim = config.hidden_size, _head_dim(config)
        q_width = config.num_attention_heads * head_dim
        kv_width = _kv_heads(config) * head_dim
        qkv_bias, o_bias = _projection_bias(config)
        self.head_dim = head_dim
        self.window = window
        # A plain attribute, not a buffer: casting the model must not round the frequencies.
        self.inv_freq_d, self.attention_scaling = rope_frequencies(config)
        self.q_proj = nn.Linear(hidden, q_width, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_width, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_width, bias=qkv_bias)
        self.o_proj = nn.Linear(q_width, hidden, bias=o_bias)
        # Over head_dim, with one weight for every head: a tensor-parallel shard keeps it whole.
        self.q_norm = RMSNorm(head_dim, config.rms_norm_eps) if _qk_norm(config) else None
        self.k_norm = RMSNorm(head_dim, config.rms_norm_eps) if _qk_norm(config) else None
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
        hidden, ffn, bias = config.hidden_size, config.intermediate_size, _mlp_bias(config)
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
    _check_sliding_window(config)


def _check_model_type(config: PretrainedConfig) -> None:
    expected = CONFIG_CLASSES.get(getattr(config, "model_type", ""))
    if expected is None or not isinstance(config, expected):
        raise ValueError(
            f"llama: expected a config of model_type {'/'.join(CONFIG_CLASSES)}, got "
            f"{type(config).__name__} (model_type {getattr(config, 'model_type', '?')!r})"
        )


def _check_rope(config: PretrainedConfig) -> None:
    rope_type = _rope_type(config)
    if rope_type not in STATIC_ROPE_TYPES:
        raise ValueError(
            f"llama: rope scaling {rope_type!r} is unsupported "
            f"(supported: {', '.join(STATIC_ROPE_TYPES)})"
        )
    if _rope_parameters(config).get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("llama: partial_rotary_factor other than 1.0 is unsupported")


def _check_sliding_window(config: PretrainedConfig) -> None:
    layer_types = getattr(config, "layer_types", None)
    if config.model_type in ("qwen2", "qwen3") and layer_types is not None:
        if len(layer_types) != config.num_hidden_layers:
            raise ValueError(
                f"llama: layer_types has {len(layer_types)} entries for "
                f"{config.num_hidden_layers} layers"
            )
        unknown = set(layer_types) - {"full_attention", "sliding_attention"}
        if unknown:
            raise ValueError(f"llama: layer_types {sorted(unknown)} are unsupported")
    for layer in range(config.num_hidden_layers):
        window = sliding_window(config, layer)
        if window is not None:
            require_positive(window, "sliding_window")


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


def _block_params(config: PretrainedConfig) -> int:
    h, f = config.hidden_size, config.intermediate_size
    q_width = config.num_attention_heads * _head_dim(config)
    kv_width = _kv_heads(config) * _head_dim(config)
    params = 2 * h * (q_width + kv_width) + 3 * h * f + 2 * h  # projections, MLP, 2 norms
    qkv_bias, o_bias = _projection_bias(config)
    params += (q_width + 2 * kv_width) * qkv_bias + h * o_bias
    params += 2 * _head_dim(config) * _qk_norm(config)
    if _mlp_bias(config):
        params += 2 * f + h
    return params


def _attended_keys(s: int, window: int | None) -> float:
    """Keys per query in the description's attention FLOPs: ``s`` without a window (dense;
    a causal kernel computes about half). With a window ``w < s`` a window-aware kernel
    (flash-attn's ``window_size``) computes ``w*s - w*(w-1)/2`` query-key pairs where a
    causal one computes ``s*(s+1)/2``: counted on the same dense scale. SDPA and eager run
    a window as a mask over the whole causal product, so on them this under-counts; the
    profiler measures what the kernel really does."""
    return s * causal_pairs(s, window) / causal_pairs(s)


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

    # Matmul FLOPs (2 per multiply-add): q/o of width a*head_dim, k/v (GQA: narrower) of
    # kv_heads*head_dim, three SwiGLU matmuls; attention scores and mixing over the keys
    # each query sees (_attended_keys: dense, causality not skipped, a sliding window less).
    def block_fwd(index: int) -> float:
        keys = _attended_keys(s, sliding_window(config, index))
        return 2 * s * h * (2 * q_width + 2 * kv_width) + 6 * s * h * f + 4 * s * keys * q_width

    # Saved for backward, in elements: both norms' inputs and outputs (4h), rotated q and the
    # kv heads repeated to q's width plus the attention output (4 q_width), Qwen3's q/k norm
    # inputs, the SwiGLU gate, up, silu and product (4f), and SDPA's per-head log-sum-exp.
    # A window changes none of them (the kernels keep O(s) per head). An estimate; the
    # profiler measures.
    qk_norm_inputs = (q_width + kv_width) * _qk_norm(config)
    block_act = s * (4 * h + 4 * q_width + qk_norm_inputs + 4 * f) + a * s
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
                fwd=block_fwd(i),
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
            act=2 * s * h,  # the norm's input and output; the loss: loss_bytes_per_sample
            **common,
        ),
    ]
    for i in range(config.num_hidden_layers):
        window = sliding_window(config, i)
        dense = 4 * s * _attended_keys(s, window) * q_width
        layers[1 + i] = with_attention(
            layers[1 + i], (dense, 4 * causal_pairs(s, window) * q_width)
        )
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
        source={"model_type": config.model_type, "tied_embeddings": str(tied).lower()},
    )


def _layer(
    name: str,
    kind: str,
    layer_type: str,
    *,
    config: PretrainedConfig,
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
            head_local=("self_attn.q_norm", "self_attn.k_norm") if _qk_norm(config) else (),
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
    qkv_bias, o_bias = _projection_bias(config)
    block += [f"{p}.bias" for p in projections[:3] if qkv_bias]
    block += ["self_attn.o_proj.bias"] if o_bias else []
    block += [f"{p}.bias" for p in mlp if _mlp_bias(config)]
    block += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"] if _qk_norm(config) else []
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
