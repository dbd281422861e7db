"""LLaMA style decoders (transformers ``llama``, ``mistral``, ``qwen2``, ``qwen3``): RMSNorm,
rotary positions, GQA, SwiGLU; the switches that tell the four apart (:func:`head_dim`,
:func:`projection_bias`, :func:`qk_norm`, :func:`sliding_window`, ...) are read from the
config by both this description and the torch model in ``partita.models``."""

from __future__ import annotations

from typing import Any

from partita.formats.architectures.attention_cost import causal_pairs, with_attention
from partita.formats.architectures.base import Architecture
from partita.formats.architectures.config_view import ConfigView
from partita.formats.model_description import LayerDescription, ModelDescription

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


def head_dim(config: Any) -> int:
    # transformers lets head_dim differ from hidden_size // heads; q/k/v widths follow it.
    return int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )


def kv_heads(config: Any) -> int:
    return int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)


def projection_bias(config: Any) -> tuple[bool, bool]:
    """(q/k/v bias, o bias): Qwen2 always biases q/k/v and never o; the others follow
    ``attention_bias`` (absent from Mistral's config: no bias)."""
    if config.model_type == "qwen2":
        return True, False
    bias = bool(getattr(config, "attention_bias", False))
    return bias, bias


def mlp_bias(config: Any) -> bool:
    return bool(getattr(config, "mlp_bias", False))


def qk_norm(config: Any) -> bool:
    """Qwen3 normalises each query and key head (RMSNorm over head_dim) before rotating."""
    return bool(config.model_type == "qwen3")


def _window(config: Any) -> int | None:
    """The configured window: Qwen2/Qwen3 keep ``sliding_window`` only under
    ``use_sliding_window`` (transformers drops it otherwise); Mistral keeps it as given."""
    if config.model_type in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        return None
    window = getattr(config, "sliding_window", None)
    return None if window is None else int(window)


def sliding_window(config: Any, layer: int) -> int | None:
    """The attention window of block ``layer``, as transformers decides it: Qwen2/Qwen3 list
    per layer in ``layer_types`` (built from ``use_sliding_window`` and ``max_window_layers``),
    Mistral slides every layer when ``sliding_window`` is set, LLaMA never slides."""
    if config.model_type == "llama":
        return None
    layer_types = getattr(config, "layer_types", None)
    if config.model_type != "mistral" and layer_types is not None:
        return _window(config) if layer_types[layer] == "sliding_attention" else None
    return _window(config)


def _layer_types(config: ConfigView) -> list[str]:
    window = _window(config)
    return [
        "sliding_attention"
        if window is not None and i >= config.max_window_layers
        else "full_attention"
        for i in range(config.num_hidden_layers)
    ]


_COMMON = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": lambda view: view.num_attention_heads,
    "head_dim": lambda view: view.hidden_size // view.num_attention_heads,
    "tie_word_embeddings": False,
}
_QWEN = {
    **_COMMON,
    "num_key_value_heads": 32,
    "vocab_size": 151936,
    "intermediate_size": 22016,
    "max_position_embeddings": 32768,
    "sliding_window": 4096,
    "use_sliding_window": False,
    "max_window_layers": 28,
    "layer_types": _layer_types,
}
# transformers' config defaults, per model_type, for the fields the description reads.
DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {
        **_COMMON,
        "vocab_size": 32000,
        "intermediate_size": 11008,
        "max_position_embeddings": 2048,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "mistral": {
        **_COMMON,
        "vocab_size": 32000,
        "intermediate_size": 14336,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "sliding_window": 4096,
    },
    "qwen2": {k: v for k, v in _QWEN.items() if k != "head_dim"},  # no head_dim field
    "qwen3": {**_QWEN, "head_dim": 128, "attention_bias": False},
}


# Rope types whose frequencies are fixed by the config. transformers' "dynamic" and
# "longrope" recompute them from the longest position of each call (dynamic also keeps the
# longest seen so far), which a block holding a sequence shard cannot know; refused.
STATIC_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


def rope_parameters(config: Any) -> dict[str, Any]:
    """transformers >= 5 keeps rope settings in ``rope_parameters`` (older: ``rope_scaling``)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return dict(rope or {})


def rope_type(config: Any) -> str:
    rope = rope_parameters(config)
    return str(rope.get("rope_type", rope.get("type", "default")))


def check_buildable(config: Any) -> None:
    """What Partita needs of a LLaMA-family config to describe and build it; the same checks
    for a transformers config and for a config.json read without transformers."""
    for name in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    ):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    heads, kv = config.num_attention_heads, kv_heads(config)
    if kv <= 0 or heads % kv:
        raise ValueError(f"num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    if head_dim(config) % 2:
        raise ValueError(f"llama: head_dim {head_dim(config)} must be even for rotary positions")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"llama: hidden_act {config.hidden_act!r} is unsupported (only 'silu')")
    if rope_type(config) not in STATIC_ROPE_TYPES:
        raise ValueError(
            f"llama: rope scaling {rope_type(config)!r} is unsupported "
            f"(supported: {', '.join(STATIC_ROPE_TYPES)})"
        )
    if rope_parameters(config).get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("llama: partial_rotary_factor other than 1.0 is unsupported")
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
        if window is not None and window <= 0:
            raise ValueError(f"sliding_window must be positive, got {window}")


def check(config: ConfigView) -> None:
    try:
        check_buildable(config)
    except ValueError as error:
        raise ValueError(f"{config.source}: {error}") from None


def _block_params(config: Any) -> int:
    h, f = config.hidden_size, config.intermediate_size
    q_width = config.num_attention_heads * head_dim(config)
    kv_width = kv_heads(config) * head_dim(config)
    params = 2 * h * (q_width + kv_width) + 3 * h * f + 2 * h  # projections, MLP, 2 norms
    qkv_bias, o_bias = projection_bias(config)
    params += (q_width + 2 * kv_width) * qkv_bias + h * o_bias
    params += 2 * head_dim(config) * qk_norm(config)
    if mlp_bias(config):
        params += 2 * f + h
    return int(params)


def _attended_keys(s: int, window: int | None) -> float:
    """Keys per query in the description's attention FLOPs: ``s`` without a window (dense;
    a causal kernel computes about half). With a window ``w < s`` a window-aware kernel
    (flash-attn's ``window_size``) computes ``w*s - w*(w-1)/2`` query-key pairs where a
    causal one computes ``s*(s+1)/2``: counted on the same dense scale. SDPA and eager run
    a window as a mask over the whole causal product, so on them this under-counts; the
    profiler measures what the kernel really does."""
    return s * causal_pairs(s, window) / causal_pairs(s)


def describe(config: ConfigView, seq_len: int, name: str) -> ModelDescription:
    # Rotary positions have no table, so seq_len may exceed max_position_embeddings (the
    # length the model was trained at); quality there is the user's concern, not the plan's.
    check(config)
    h, a, f, v, s = (
        config.hidden_size,
        config.num_attention_heads,
        config.intermediate_size,
        config.vocab_size,
        seq_len,
    )
    q_width = a * head_dim(config)
    kv_width = kv_heads(config) * head_dim(config)
    tied = config.tie_word_embeddings

    # Matmul FLOPs (2 per multiply-add): q/o of width a*head_dim, k/v (GQA: narrower) of
    # kv_heads*head_dim, three SwiGLU matmuls; attention scores and mixing over the keys
    # each query sees (_attended_keys: dense, causality not skipped, a sliding window less).
    def block_fwd(index: int) -> float:
        keys = _attended_keys(s, sliding_window(config, index))
        dense = 2 * s * h * (2 * q_width + 2 * kv_width) + 6 * s * h * f
        return float(dense + 4 * s * keys * q_width)

    # Saved for backward, in elements: both norms' inputs and outputs (4h), rotated q and the
    # kv heads repeated to q's width plus the attention output (4 q_width), Qwen3's q/k norm
    # inputs, the SwiGLU gate, up, silu and product (4f), and SDPA's per-head log-sum-exp.
    # A window changes none of them (the kernels keep O(s) per head). An estimate; the
    # profiler measures.
    qk_norm_inputs = (q_width + kv_width) * qk_norm(config)
    block_act = s * (4 * h + 4 * q_width + qk_norm_inputs + 4 * f) + a * s
    common: dict[str, Any] = {"config": config, "s": s}
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
        num_kv_heads=kv_heads(config),
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
    config: Any,
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
        num_kv_heads=kv_heads(config) if is_block else 0,
        ffn_size=config.intermediate_size if is_block else 0,
        seq_len=s,
        params=params,
        forward_flops_per_sample=float(fwd),
        backward_flops_per_sample=float(2 * fwd),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(width * s * FP32_BYTES),
    )


ARCHITECTURE = Architecture(
    family="llama",
    defaults=DEFAULTS,
    describe=describe,
    default_seq_len=lambda config: min(config.max_position_embeddings, 4096),
    presets=PRESETS,
    size_keys={
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "vocab": "vocab_size",
        "positions": "max_position_embeddings",
    },
    derived=frozenset({"layer_types"}),  # head_dim and kv heads: None handled by the formula
)
