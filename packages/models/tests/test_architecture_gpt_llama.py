"""The torch-free descriptions of GPT and LLaMA-family configs read a config.json as
transformers does: a field the file leaves out takes transformers' default, derived fields
(head_dim, num_key_value_heads, Qwen's layer_types and window) included."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from partita.formats.architectures import describe_config
from partita.formats.architectures import gpt as gpt_arch
from partita.formats.architectures import llama as llama_arch
from partita.models.api import describe_model

CLASSES = {
    "gpt2": GPT2Config,
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
}
SMALL = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 4}
MINIMAL: list[dict[str, Any]] = [
    {"model_type": "gpt2"},
    {"model_type": "gpt2", "n_embd": 96, "n_head": 6, "n_layer": 3, "n_inner": 200},
    {"model_type": "gpt2", "n_embd": 64, "n_head": 4, "tie_word_embeddings": False},
    {"model_type": "llama"},
    {"model_type": "llama", **SMALL},
    {"model_type": "llama", **SMALL, "num_key_value_heads": 2, "head_dim": 32},
    {"model_type": "llama", **SMALL, "head_dim": None, "attention_bias": True},
    {"model_type": "llama", **SMALL, "mlp_bias": True, "tie_word_embeddings": True},
    {"model_type": "mistral"},
    {"model_type": "mistral", **SMALL, "num_key_value_heads": 2},
    {"model_type": "mistral", **SMALL, "num_key_value_heads": 2, "sliding_window": None},
    {"model_type": "mistral", **SMALL, "num_key_value_heads": 2, "sliding_window": 16},
    {"model_type": "qwen2"},
    {"model_type": "qwen2", **SMALL, "num_key_value_heads": 2, "use_sliding_window": True},
    {
        "model_type": "qwen2",
        **SMALL,
        "num_key_value_heads": 2,
        "use_sliding_window": True,
        "max_window_layers": 2,
    },
    {
        "model_type": "qwen2",
        **SMALL,
        "num_key_value_heads": 2,
        "sliding_window": 8,
        "max_window_layers": 1,
    },
    {
        "model_type": "qwen2",
        **SMALL,
        "num_key_value_heads": 1,
        "use_sliding_window": True,
        "sliding_window": 8,
        "layer_types": ["full_attention", "sliding_attention"] * 2,
    },
    {"model_type": "qwen3"},
    {"model_type": "qwen3", **SMALL, "num_key_value_heads": 2},
    {
        "model_type": "qwen3",
        **SMALL,
        "num_key_value_heads": 2,
        "use_sliding_window": True,
        "max_window_layers": 3,
    },
]
PRESETS = {**gpt_arch.PRESETS, **llama_arch.PRESETS}


def _ids(configs: list[dict[str, Any]]) -> list[str]:
    return [",".join(f"{k}={v}" for k, v in c.items() if k != "layer_types") for c in configs]


@pytest.mark.parametrize("raw", MINIMAL, ids=_ids(MINIMAL))
def test_defaults_are_transformers_defaults(raw: dict[str, Any]) -> None:
    filled = CLASSES[raw["model_type"]](**raw).to_dict()
    seq = 64
    ours = describe_config(raw, seq_len=seq, name="m")
    assert ours == describe_config(filled, seq_len=seq, name="m")
    assert ours == describe_model(raw, seq_len=seq, name="m")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_torch_free_equal_the_models(name: str) -> None:
    raw = PRESETS[name]
    assert describe_config(raw, name=name) == describe_model(name)
    assert describe_config(raw, name=name) == describe_config(
        CLASSES[raw["model_type"]](**raw).to_dict(), name=name
    )


def test_qwen_window_follows_use_sliding_window() -> None:
    """Qwen2.5's config.json keeps a sliding_window with use_sliding_window false:
    transformers ignores it, and so must the description (every layer dense)."""
    raw = llama_arch.PRESETS["qwen2.5-7b"]
    description = describe_config(raw, seq_len=8192)
    blocks = description.blocks
    assert {b.attention_kernel_flops_per_sample for b in blocks} == {
        blocks[0].attention_kernel_flops_per_sample
    }
    windowed = describe_config(
        {**raw, "use_sliding_window": True, "sliding_window": 1024, "max_window_layers": 14},
        seq_len=8192,
    )
    kernel = [b.attention_kernel_flops_per_sample for b in windowed.blocks]
    assert kernel[:14] == [blocks[0].attention_kernel_flops_per_sample] * 14
    assert max(kernel[14:]) < kernel[0] / 4
