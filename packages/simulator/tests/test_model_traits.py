"""What the spec-sheet cost model makes of the traits of today's models (issue 25), on the
real-size presets the simulator ships: grouped-query attention and 128K-152K vocabularies whose
loss outweighs a block's activations (sliding windows: the models package's
test_families and test_llama, which can describe other sequence lengths)."""

from __future__ import annotations

from dataclasses import replace

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


@pytest.mark.parametrize("tied", [True, False])
def test_fsdp_leaves_a_tied_vocabulary_table_whole(tied: bool) -> None:
    """The executor's FSDP ignores a table tied between embedding and head (it sums its
    gradient by hand), so under ZeRO-3 every rank keeps all of it: parameters, gradient and
    AdamW states. An untied table is sharded like any other parameter."""
    from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy
    from partita.formats.architectures import describe_config, presets
    from partita.simulator.simulation import build_workload
    from partita.simulator.specsheet import hardware_profile_from_spec

    config = {**presets()["gpt2"], "tie_word_embeddings": tied}
    model = describe_config(config, name="gpt2")
    assert bool(model.shared_vocabulary) == tied
    layers = len(model.blocks)
    plan = Plan(
        world_size=2,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=2,
        num_micro_batches=1,
        pipeline=PipelineConfig(degree=1, schedule="gpipe", stage_num_layers=(layers,)),
        layers=tuple(LayerStrategy(dp="zero3") for _ in range(layers)),
        vocab=VocabStrategy(dp="zero3"),
    )
    (stage,), _ = build_workload(
        plan,
        hardware=hardware_profile_from_spec(replace(H100, devices_per_node=2)),
        model_profile=model_profile_from_description(model, H100, dtype="fp32"),
        model=model,
    )
    embedding = stage.layers[0]
    table = 4 * model.vocab_size * model.hidden_size
    rest = 4 * model.layers[0].params - table  # the position table
    expected = table + rest / 2 if tied else (table + rest) / 2
    assert embedding.param_bytes == pytest.approx(expected)
    assert embedding.optimizer_bytes == pytest.approx(2 * expected)
    # The table's whole gradient is made by the head's backward, the first to reach it, and
    # held from there to the step's end: it is counted there (the fidelity benchmark's FSDP
    # plans measured it from the start of the backward).
    head = stage.layers[-1]
    assert embedding.grad_bytes == pytest.approx(expected - (table if tied else 0))
    assert head.table_grad_bytes == (table if tied else 0)
    assert embedding.table_grad_bytes == 0
    # The whole table's gradient is all-reduced; the rest reduce-scattered.
    kinds = [kind for kind, _ in embedding.grad_sync]
    assert kinds == (["reduce_scatter", "all_reduce"] if tied else ["reduce_scatter"])
