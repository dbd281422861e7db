"""Layer setups and the sequence-parallel checks, without process groups (no ranks)."""

from __future__ import annotations

import pytest

from partita.executor.setups import LayerSetup, check_sequence_parallel, layer_setups
from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy
from partita.models.api import build_model


class _Groups:
    def for_tp(self, tp: int) -> str:
        return f"groups(tp={tp})"


def _setup(sp: str, tp: int = 2) -> LayerSetup:
    return LayerSetup("stages.0.blocks.0", tp, sp, "ddp", False, None)  # type: ignore[arg-type]


def test_a_family_without_sequence_parallelism_is_refused_by_layer() -> None:
    with pytest.raises(ValueError, match=r"layer stages\.0\.blocks\.0: ulysses .* not supported"):
        check_sequence_parallel("unknown", [_setup("ulysses")])


@pytest.mark.parametrize("family", ["gpt", "llama", "bert", "vit", "t5", "swin"])
@pytest.mark.parametrize("sp", ["megatron", "ulysses"])
def test_every_family_runs_both_sequence_parallel_modes(family: str, sp: str) -> None:
    check_sequence_parallel(family, [_setup(sp)])


def test_t5_bridge_follows_the_vocabulary_strategy() -> None:
    # It embeds the decoder's tokens with the table the embedding and head share.
    model = build_model("t5-tiny", seed=0)
    blocks = len(model.layer_names) - 2
    plan = Plan(
        world_size=4,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=8,
        num_micro_batches=1,
        pipeline=PipelineConfig(degree=1, schedule="gpipe", stage_num_layers=(blocks,)),
        layers=tuple(LayerStrategy(tp=2, sp="megatron", ckpt="full") for _ in range(blocks)),
        vocab=VocabStrategy(tp=1),
    )
    setups = {s.name: s for s in layer_setups(model, plan, _Groups())}  # type: ignore[arg-type]
    bridge = setups["decoder_embedding"]
    assert (bridge.tp, bridge.sp, bridge.ckpt) == (1, "none", "full")
    assert (setups["decoder.0"].tp, setups["decoder.0"].sp) == (2, "megatron")
