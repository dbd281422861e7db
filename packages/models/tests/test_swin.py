"""Swin specifics: padding, odd patch merging, clamped windows, bad configs, split heads."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from transformers import SwinConfig

from partita.models.api import build_model, describe_model
from partita.models.families import swin
from partita.models.heads import merge_heads, split_heads

EXACT = {"rtol": 1e-6, "atol": 1e-6}
TINY = {k: v for k, v in swin.PRESETS["swin-tiny"].items() if k != "model_type"}

# Geometries the tiny preset does not reach, each checked against transformers.
GEOMETRIES = {
    # 14x14 -> 7x7 -> 4x4 maps with window 3: every stage padded, odd-sized patch merging.
    "padded_windows_and_odd_merging": {
        "image_size": 28,
        "depths": [2, 2, 2],
        "num_heads": [2, 2, 4],
        "window_size": 3,
    },
    # 30 pixels with patch 4: the image itself is padded to whole patches; no q/k/v bias.
    "padded_image_without_qkv_bias": {
        "image_size": 30,
        "patch_size": 4,
        "depths": [2, 2],
        "num_heads": [2, 2],
        "window_size": 3,
        "qkv_bias": False,
    },
    # A 12x20 map with absolute position embeddings and an odd depth.
    "rectangular_with_positions": {
        "image_size": [24, 40],
        "depths": [2, 3],
        "num_heads": [2, 2],
        "use_absolute_embeddings": True,
    },
}


def _config(**overrides: object) -> SwinConfig:
    return SwinConfig(**{**TINY, "embed_dim": 16, **overrides})


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_geometry_equals_transformers(geometry: str) -> None:
    config = _config(**GEOMETRIES[geometry])
    torch.manual_seed(0)
    reference = swin.reference_model(config)
    with torch.no_grad():  # non-zero position tables, so their indexing is checked too
        for param in reference.parameters():
            param.add_(0.02 * torch.randn_like(param))
    model = swin.build(config)
    model.load_state_dict(swin.from_hf_state_dict(reference.state_dict(), config))
    seq = swin.stage_tokens(config)
    batch = swin.synthetic_batch(config, 2, seq, torch.Generator().manual_seed(0))
    outputs = model(batch)
    model.loss(outputs, batch).backward()
    ref_logits, ref_loss = swin.reference_outputs(reference, batch)
    ref_loss.backward()
    torch.testing.assert_close(outputs["logits"], ref_logits, **EXACT)
    grads = {k: p.grad for k, p in reference.named_parameters()}
    mapped = swin.from_hf_state_dict(grads, config)
    for key, param in model.named_parameters():
        torch.testing.assert_close(param.grad, mapped[key], **EXACT, msg=key)


def test_window_clamped_to_the_map_has_no_shift() -> None:
    last = swin.stages(_config())[-1]
    assert (last.height, last.window, last.shift) == (4, 4, 0)
    model = swin.build(_config())
    shifts = [layer.shift for layer in model.layers if isinstance(layer, swin.SwinBlock)]
    assert shifts == [0, 2, 0, 2, 0, 0]


def test_description_sizes_are_those_of_each_stage() -> None:
    description = describe_model("swin-base")
    by_name = {layer.name: layer for layer in description.layers}
    block = by_name["stages.2.blocks.5"]
    assert (block.hidden_size, block.num_heads, block.ffn_size, block.seq_len) == (
        512,
        16,
        2048,
        14 * 14,
    )
    merging = by_name["stages.2.merging"]
    assert (merging.kind, merging.num_heads, merging.seq_len) == ("block", 0, 14 * 14)
    assert by_name["head"].hidden_size == 1024
    assert description.seq_len == 56 * 56
    assert sum(layer.layer_type == "swin_patch_merging" for layer in description.layers) == 3


def _tiny_attention(**overrides: object) -> swin.WindowAttention:
    model = build_model({"model_type": "swin", **TINY, **overrides}, seed=0)
    block = next(layer for layer in model.layers if isinstance(layer, swin.SwinBlock))
    if block.shift == 0:
        block = model.layers[2]  # the shifted block
    attention = block.attention
    with torch.no_grad():
        attention.relative_position_bias_table.normal_()
        for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
            proj.bias.normal_()
    return attention


def test_splitting_heads_and_their_position_table_gives_the_same_attention() -> None:
    """Tensor parallelism as the layout describes it: q/k/v and the table split by heads."""
    attention = _tiny_attention()
    x = torch.randn(2, 256, attention.q_proj.in_features)  # 2 images of a 16x16 map
    full = attention(x)
    half = attention.q_proj.out_features // 2
    total = torch.zeros_like(full)
    for rank in range(2):
        shard = copy.deepcopy(attention)
        cols = slice(rank * half, (rank + 1) * half)
        heads = slice(rank, rank + 1)  # 2 heads of 16 channels: one per shard
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj"):
                proj = getattr(shard, name)
                proj.weight = torch.nn.Parameter(proj.weight[cols])
                proj.bias = torch.nn.Parameter(proj.bias[cols])
            shard.o_proj.weight = torch.nn.Parameter(shard.o_proj.weight[:, cols])
            if rank:
                shard.o_proj.bias.zero_()
            table = shard.relative_position_bias_table
            shard.relative_position_bias_table = torch.nn.Parameter(table[:, heads])
        total = total + shard(x)
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_size", [32, 28])  # 16x16 map, and 14x14 padded to 16x16
def test_projecting_bands_then_windows_per_head_gives_the_same_attention(image_size: int) -> None:
    """Ulysses as the layout describes it, in one process: q/k/v projected on bands of the
    map, regrouped into the whole map of each half of the heads, windowed attention with
    those heads of the position bias and padding values, output projected on the bands."""
    attention = _tiny_attention(image_size=image_size)
    stage, hd = attention.windows.stage, attention.head_dim
    x = torch.randn(2, stage.tokens, attention.q_proj.in_features)
    full = attention(x)
    bands = x.chunk(2, dim=1)
    projected = [
        [split_heads(p(band), hd) for p in (attention.q_proj, attention.k_proj, attention.v_proj)]
        for band in bands
    ]
    pads = [attention._projected_zero(p) for p in (attention.k_proj, attention.v_proj)]
    bias = attention.position_bias()
    outs = []
    for heads in (slice(0, 1), slice(1, 2)):  # rank r gets head r of the whole map
        q, k, v = (torch.cat([band[i][:, heads] for band in projected], dim=2) for i in range(3))
        outs.append(
            attention.windows(
                q,
                k,
                v,
                position_bias=bias[:, heads],
                pad_k=pads[0][:, heads],
                pad_v=pads[1][:, heads],
            )
        )
    out_bhsd = torch.cat(outs, dim=1)
    pieces = [attention.o_proj(merge_heads(band)) for band in out_bhsd.chunk(2, dim=2)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-6, atol=1e-6)


def test_ulysses_exchange_names_the_parameter_free_windows() -> None:
    config = _config()
    model = swin.build(config)
    layouts = swin.tp_layouts(config)
    for layer_type, layer in zip(model.layer_types, model.layers, strict=True):
        for path in layouts[layer_type].ulysses_exchange:
            windows = layer.get_submodule(path)
            assert isinstance(windows, swin.ShiftedWindows), (layer_type, path)
            assert not list(windows.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_heads": [3, 4, 8]}, "num_heads[0] 3 does not divide stage 0 channels 16"),
        ({"depths": [2, 2], "num_heads": [2, 4, 8]}, "must be non-empty and of the same length"),
        ({"window_size": 5}, "stage 2 feature map 4x4 is smaller than window_size 5"),
        ({"num_labels": 1}, "num_labels must be at least 2"),
        ({"hidden_act": "swish"}, "hidden_act 'swish' is not supported"),
        (
            {
                "image_size": 30,
                "patch_size": 4,
                "use_absolute_embeddings": True,
                "depths": [2],
                "num_heads": [2],
            },
            "use_absolute_embeddings needs image_size to be a multiple of patch_size",
        ),
    ],
)
def test_bad_config_is_one_clear_value_error(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        swin.check_config(_config(**overrides))


def test_images_of_another_size_are_refused() -> None:
    model = build_model("swin-tiny", seed=0)
    with pytest.raises(ValueError, match="pixel_values must be"):
        model({"pixel_values": torch.randn(1, 3, 64, 64)})


def test_seq_len_other_than_the_patch_count_is_refused() -> None:
    with pytest.raises(ValueError, match="seq_len 100 differs from the 256 tokens"):
        describe_model("swin-tiny", seq_len=100)


def test_drop_path_is_per_sample_and_only_in_training() -> None:
    model = build_model({"model_type": "swin", **TINY, "drop_path_rate": 0.5}, seed=0)
    rates = [layer.drop_path.rate for layer in model.layers if isinstance(layer, swin.SwinBlock)]
    assert rates == pytest.approx([0.5 * i / 5 for i in range(6)])
    model.eval()
    x = torch.randn(2, 256, 32)
    assert torch.equal(model.layers[1].drop_path(x), x)
