"""Models built on the meta device and filled piece by piece (``partita.models.init``)."""

from __future__ import annotations

import pytest
import torch

from partita.models.api import build_model, resolve_config
from partita.models.families import family_of
from partita.models.init import Box, InitSpec, build_empty, fill_box, init_specs

FAMILIES = ("gpt-tiny", "llama-tiny", "bert-tiny", "t5-tiny", "vit-tiny", "swin-tiny")


@pytest.mark.parametrize("preset", FAMILIES)
def test_parameters_follow_the_distributions_transformers_initialises_with(preset: str) -> None:
    config = resolve_config(preset)
    ours = dict(build_model(config, seed=0).named_parameters(remove_duplicate=False))
    torch.manual_seed(0)
    reference = family_of(config).reference_model(config)
    theirs = family_of(config).from_hf_state_dict(reference.state_dict(), config)
    assert set(ours) == set(theirs)
    for name, tensor in theirs.items():
        mine = ours[name].detach()
        if tensor.std() == 0:  # a constant (norm weights, biases)
            assert torch.equal(mine, tensor), name
        elif tensor.numel() >= 4096:
            std = float(tensor.std())
            assert float(mine.std()) == pytest.approx(std, rel=0.1), name
            assert abs(float(mine.mean()) - float(tensor.mean())) < 0.1 * std, name
            assert float(mine.abs().max()) < 10 * std, name


def test_an_embeddings_padding_row_is_zero_as_in_transformers() -> None:
    config = resolve_config("bert-tiny")
    specs = init_specs(config)
    name = "layers.0.word_embeddings.weight"
    assert specs[name].zero_rows == (config.pad_token_id,)
    table = dict(build_model(config, seed=3).named_parameters())[name]
    assert torch.count_nonzero(table[config.pad_token_id]) == 0
    assert torch.count_nonzero(table[config.pad_token_id + 1]) > 0


def test_the_model_is_built_without_parameter_memory() -> None:
    config = resolve_config("llama2-70b")  # 276 GB in fp32
    model = build_empty(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) > 6e10


SPECS = {
    "normal": InitSpec("normal", (("mean", 0.5), ("std", 0.02)), zero_rows=(3, 700)),
    "trunc_normal": InitSpec("trunc_normal", (("a", -0.03), ("b", 0.03), ("std", 0.02))),
    "uniform": InitSpec("uniform", (("a", -1.0), ("b", 1.0))),
    "constant": InitSpec("constant", (("value", 1.0),)),
}


@pytest.mark.parametrize("kind", SPECS)
@pytest.mark.parametrize(
    ("shape", "offsets", "size"),
    [
        ((1000, 5000), (0, 0), (1000, 5000)),
        ((1000, 5000), (250, 0), (250, 5000)),  # a row-parallel cut
        ((1000, 5000), (0, 1250), (1000, 1250)),  # a column-parallel cut
        ((1000, 5000), (333, 4097), (2, 903)),  # an uneven piece across tile edges
        ((9000,), (4500,), (4500,)),
        ((64, 3, 8, 8), (16, 0, 0, 0), (16, 3, 8, 8)),
    ],
)
def test_a_piece_equals_the_same_box_of_the_whole(
    kind: str, shape: tuple[int, ...], offsets: tuple[int, ...], size: tuple[int, ...]
) -> None:
    spec = SPECS[kind]
    whole = fill_box(torch.empty(shape), spec, seed=7, name="w", box=Box.whole(shape))
    piece = fill_box(torch.empty(size), spec, seed=7, name="w", box=Box(offsets, shape))
    index = tuple(slice(o, o + n) for o, n in zip(offsets, size, strict=True))
    assert torch.equal(piece, whole[index])


def test_drawn_values_depend_on_the_seed_and_the_name_only() -> None:
    spec = SPECS["normal"]
    a = fill_box(torch.empty(300, 300), spec, seed=1, name="a", box=Box.whole((300, 300)))
    again = fill_box(torch.empty(300, 300), spec, seed=1, name="a", box=Box.whole((300, 300)))
    other_seed = fill_box(torch.empty(300, 300), spec, seed=2, name="a", box=Box.whole((300, 300)))
    other_name = fill_box(torch.empty(300, 300), spec, seed=1, name="b", box=Box.whole((300, 300)))
    assert torch.equal(a, again)
    assert not torch.equal(a, other_seed) and not torch.equal(a, other_name)
    bf16 = fill_box(
        torch.empty(300, 300, dtype=torch.bfloat16),
        spec,
        seed=1,
        name="a",
        box=Box.whole((300, 300)),
    )
    assert torch.equal(bf16, a.to(torch.bfloat16))  # drawn in fp32 on the host, then cast


def test_trunc_normal_stays_inside_its_bounds() -> None:
    spec = SPECS["trunc_normal"]
    drawn = fill_box(torch.empty(400, 400), spec, seed=0, name="t", box=Box.whole((400, 400)))
    assert float(drawn.min()) >= -0.03 and float(drawn.max()) <= 0.03
    assert float(drawn.std()) == pytest.approx(0.01485, rel=0.05)  # N(0, 0.02) cut at 1.5 std
