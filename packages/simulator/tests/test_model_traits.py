"""What the spec-sheet cost model makes of the traits of today's models (issue 25), on the
real-size presets the simulator ships: grouped-query attention and 128K-152K vocabularies whose
loss outweighs a block's activations (sliding windows: the models package's
test_families and test_llama, which can describe other sequence lengths)."""

from __future__ import annotations

import pytest

from partita.formats import LayerMemory, ModelDescription
from partita.simulator.model_source import load_model_description
from partita.simulator.specsheet import load_cluster_spec, model_profile_from_description

H100 = load_cluster_spec("h100-sxm")


def _memory(model: ModelDescription, layer_type: str, tp: int, dtype: str) -> LayerMemory:
    profile = model_profile_from_description(model, H100, dtype=dtype)  # type: ignore[arg-type]
    entries = next(t for t in profile.layer_types if t.layer_type == layer_type).memory
    return next(m for m in entries if m.tp == tp and m.sp == "none")


def test_gqa_narrows_k_and_v_in_parameters_and_flops() -> None:
    model = load_model_description("llama3-8b")
    block = model.blocks[0]
    h, f, s = model.hidden_size, model.ffn_size, model.seq_len
    q_width, kv_width = h, model.num_kv_heads * (h // model.num_heads)  # 4096, 1024
    assert model.num_kv_heads == 8 and kv_width == h // 4
    assert block.params == 2 * h * (q_width + kv_width) + 3 * h * f + 2 * h
    matmuls = 2 * s * h * (2 * q_width + 2 * kv_width) + 6 * s * h * f
    assert block.forward_flops_per_sample == matmuls + 4 * s * s * q_width


@pytest.mark.parametrize("preset", ["llama3-8b", "qwen2.5-7b"])
def test_the_loss_of_a_large_vocabulary_outweighs_a_block_and_splits_with_vocab_tp(
    preset: str,
) -> None:
    model = load_model_description(preset)
    head = model.layers[-1]
    assert head.kind == "head" and model.vocab_size >= 128_000
    # The loss keeps the fp32 softmax of [seq, vocab] logits: 2.0 GiB (Llama 3) and 2.3 GiB
    # (Qwen2.5) per 4096-token sample.
    assert head.loss_bytes_per_sample == 4 * model.seq_len * model.vocab_size
    whole = _memory(model, head.layer_type, 1, "bf16")
    block = _memory(model, model.blocks[0].layer_type, 1, "bf16")
    assert whole.activation_bytes_per_sample > 1.4 * block.activation_bytes_per_sample
    # bf16 halves a block's activations but not the loss's fp32 softmax.
    fp32 = _memory(model, head.layer_type, 1, "fp32")
    assert whole.activation_bytes_per_sample > head.loss_bytes_per_sample
    assert fp32.activation_bytes_per_sample - whole.activation_bytes_per_sample == pytest.approx(
        head.activation_bytes_per_sample / 2
    )
    # A vocabulary-parallel head and loss split the softmax: 8 ranks, an eighth each.
    split = _memory(model, head.layer_type, 8, "bf16")
    loss_share = head.loss_bytes_per_sample / 8
    assert split.activation_bytes_per_sample < whole.activation_bytes_per_sample / 4
    assert split.backward_peak_bytes_per_sample == pytest.approx(2 * loss_share)
