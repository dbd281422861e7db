"""Which layers and configurations ``partita profile model`` measures, and its small helpers."""

from __future__ import annotations

import pytest

from partita.models.api import describe_model
from partita.profiler.model_cases import Config, layer_cases
from partita.profiler.model_command import parse_bytes
from partita.profiler.model_run import per_sample

ALL_MODES = ("megatron", "ulysses")


def test_one_case_per_layer_type_with_the_plan_checks_configurations() -> None:
    description = describe_model("gpt-tiny", seq_len=30)  # 4 heads; 30 is not divisible by 4
    cases = layer_cases(description, tp_degrees=(1, 2, 4, 8), sp_modes=ALL_MODES)
    assert [(c.index, c.layer_type) for c in cases] == [
        (0, "gpt_embedding"),
        (1, "gpt_block"),
        (5, "gpt_head"),
    ]
    block = cases[1].configs
    assert Config(1, "none") in block and Config(2, "megatron") in block
    assert Config(2, "ulysses") in block and Config(4, "none") in block
    assert Config(4, "megatron") not in block  # 4 does not divide seq_len 30
    assert Config(8, "none") not in block  # 8 does not divide 4 heads
    assert all(c.sp == "none" for c in cases[0].configs)  # vocab 512: tp 1, 2, 4, 8
    assert [c.tp for c in cases[0].configs] == [1, 2, 4, 8]


def test_without_sequence_parallelism_blocks_get_sp_none_only() -> None:
    description = describe_model("gpt-tiny", seq_len=32)
    cases = layer_cases(description, tp_degrees=(1, 2), sp_modes=())
    assert cases[1].configs == (Config(1, "none"), Config(2, "none"))


def test_only_the_families_modes_and_a_vocabulary_block_at_vocab_degrees_sp_none() -> None:
    description = describe_model("t5-tiny", seq_len=32)
    cases = {
        c.layer_type: c
        for c in layer_cases(description, tp_degrees=(1, 2, 4), sp_modes=("megatron",))
    }
    assert cases["t5_encoder_block"].configs == (
        Config(1, "none"),
        Config(2, "none"),
        Config(2, "megatron"),
        Config(4, "none"),
        Config(4, "megatron"),
    )
    # T5's decoder embedding shares the vocabulary table: the embedding's degrees, sp none.
    bridge = cases["t5_decoder_embedding"]
    assert bridge.layer.vocab_parallel
    assert (
        bridge.configs
        == cases["t5_embedding"].configs
        == (
            Config(1, "none"),
            Config(2, "none"),
            Config(4, "none"),
        )
    )


def test_a_layer_type_at_several_sequence_lengths_is_a_case_each() -> None:
    description = describe_model("swin-tiny")
    cases = layer_cases(description, tp_degrees=(1,), sp_modes=())
    keys = [(c.layer_type, c.layer.seq_len) for c in cases]
    assert len(keys) == len(set(keys))
    assert {layer.layer_type for layer in description.layers} == {c.layer_type for c in cases}


def test_per_sample_bytes_is_the_slope_through_the_micro_batches() -> None:
    assert per_sample({1: 1100, 2: 2100, 4: 4100}) == pytest.approx(1000)
    assert per_sample({2: 300}) == 150
    assert per_sample({1: 500, 2: 400}) == 0.0  # never negative


@pytest.mark.parametrize(
    ("text", "expected"),
    [("900k", 900_000), ("8GiB", 8 * 2**30), ("512", 512), ("1.5M", 1_500_000), ("2mib", 2**21)],
)
def test_memory_limits_read_with_units(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


def test_a_memory_limit_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="--memory-limit"):
        parse_bytes("lots")


def test_rounds_take_each_time_as_the_median_over_the_passes() -> None:
    from partita.formats import LayerMemory, LayerTiming
    from partita.profiler.model_run import _Collected, _median_over_rounds

    def timing(micro_batch: int, forward: float, ckpt: float | None) -> LayerTiming:
        return LayerTiming(
            tp=1, sp="none", micro_batch=micro_batch, seq_len=8, forward_s=forward,
            backward_s=2 * forward, spread=0.1, checkpoint_forward_s=ckpt,
            checkpoint_backward_s=ckpt, selective_recompute_s=ckpt, selective_forward_s=ckpt,
            attention_checkpoint_forward_s=ckpt, attention_checkpoint_backward_s=ckpt,
        )  # fmt: skip

    memory = LayerMemory(
        tp=1, sp="none", seq_len=8, param_bytes=4, grad_bytes=4, optimizer_bytes=8,
        activation_bytes_per_sample=1.0, checkpoint_activation_bytes_per_sample=0.5,
    )  # fmt: skip
    rounds = []
    for forwards in ((1.0, 2.0), (3.0, 2.5), (2.0, 9.0)):  # a burst of other work: the 9
        collected = _Collected()
        collected.add(
            "block", [timing(1, forwards[0], forwards[0]), timing(2, forwards[1], None)], memory
        )
        rounds.append(collected)
    merged = _median_over_rounds(rounds)
    first, second = merged.timings["block"]
    assert (first.forward_s, first.backward_s, first.checkpoint_forward_s) == (2.0, 4.0, 2.0)
    assert first.selective_recompute_s == first.selective_forward_s == 2.0
    assert first.attention_checkpoint_forward_s == first.attention_checkpoint_backward_s == 2.0
    assert (second.forward_s, second.checkpoint_backward_s) == (2.5, None)  # None in a round
    assert second.selective_recompute_s is None and second.selective_forward_s is None
    assert second.attention_checkpoint_backward_s is None
    assert merged.memory["block"] == [memory]
    assert _median_over_rounds(rounds[:1]) is rounds[0]
