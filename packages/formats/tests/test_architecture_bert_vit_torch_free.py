"""BERT's and ViT's descriptions from a config alone, without torch or transformers."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest

from partita.formats.architectures import describe_with
from partita.formats.architectures.bert import ARCHITECTURE as BERT
from partita.formats.architectures.vit import ARCHITECTURE as VIT

BERT_TINY = BERT.presets["bert-tiny"]
VIT_TINY = VIT.presets["vit-tiny"]


def test_modules_import_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "import partita.formats.architectures.bert, partita.formats.architectures.vit\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        (BERT_TINY, {"hidden_size": -1}, "hidden_size must be a positive integer, got -1"),
        (BERT_TINY, {"num_attention_heads": 5}, "hidden_size (64) must be divisible by num_at"),
        (BERT_TINY, {"type_vocab_size": 0}, "type_vocab_size must be a positive integer"),
        (BERT_TINY, {"max_position_embeddings": "128"}, "max_position_embeddings must be a"),
        (VIT_TINY, {"hidden_size": -1}, "hidden_size must be a positive integer, got -1"),
        (VIT_TINY, {"num_attention_heads": 5}, "hidden_size (64) must be divisible by num_at"),
        (VIT_TINY, {"image_size": 0}, "image_size must be positive, got 0"),
        (VIT_TINY, {"patch_size": [8, 0]}, "patch_size must be positive, got [8, 0]"),
        (VIT_TINY, {"patch_size": "8"}, "patch_size must be a positive integer or a pair"),
        (VIT_TINY, {"patch_size": 64}, "patch_size 64 exceeds image_size 32"),
        (VIT_TINY, {"num_channels": 0}, "num_channels must be a positive integer, got 0"),
        (VIT_TINY, {"num_labels": 1}, "num_labels must be at least 2"),
        (VIT_TINY, {"num_labels": None, "id2label": {}}, "num_labels must be at least 2"),
    ],
)
def test_bad_field_is_a_value_error_naming_it(
    preset: dict[str, Any], overrides: dict[str, Any], message: str
) -> None:
    arch = BERT if preset is BERT_TINY else VIT
    with pytest.raises(ValueError, match="^my.json: .*" + re.escape(message)):
        describe_with(arch, {**preset, **overrides}, source="my.json")


def test_sequence_beyond_the_positions_is_refused() -> None:
    with pytest.raises(ValueError, match="bert: seq_len 256 exceeds max_position_embeddings 128"):
        describe_with(BERT, BERT_TINY, seq_len=256)


def test_vit_sequence_is_the_patches_and_cls_token() -> None:
    assert describe_with(VIT, VIT_TINY).seq_len == (32 // 8) ** 2 + 1
    with pytest.raises(ValueError, match="vit: seq_len 16 differs from the 17 tokens"):
        describe_with(VIT, VIT_TINY, seq_len=16)


def test_fields_missing_from_the_file_take_transformers_defaults() -> None:
    bert = describe_with(
        BERT,
        {"model_type": "bert", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2},
    )
    # vocab_size 30522, max_position_embeddings 512 (the default seq_len), intermediate 3072.
    assert (bert.vocab_size, bert.seq_len, bert.ffn_size) == (30522, 512, 3072)
    assert bert.source["tied_embeddings"] == "true"
    assert bert.shared_vocabulary == ("embedding", "head")
    # Token tables: vocabulary, 512 positions and 2 token types, plus the norm's 2 x 64.
    assert bert.layers[0].params == (30522 + 512 + 2) * 64 + 2 * 64

    vit = describe_with(VIT, {"model_type": "vit", "hidden_size": 64, "num_attention_heads": 4})
    # 224 x 224 images in 16 x 16 patches, 3 channels, 12 blocks, 2 labels.
    assert (vit.seq_len, len(vit.blocks), vit.num_labels) == (14 * 14 + 1, 12, 2)
    assert vit.layers[0].params == (3 * 16 * 16) * 64 + 64 + 64 + 197 * 64


def test_vit_labels_come_from_id2label_when_the_file_has_no_num_labels() -> None:
    labels = {"0": "cat", "1": "dog", "2": "bird"}
    assert describe_with(VIT, {**VIT_TINY, "num_labels": None, "id2label": labels}).num_labels == 3
    no_count = {k: v for k, v in VIT_TINY.items() if k != "num_labels"}
    assert describe_with(VIT, {**no_count, "id2label": labels}).num_labels == 3
    assert describe_with(VIT, {**VIT_TINY, "id2label": labels}).num_labels == 10  # given wins


@pytest.mark.parametrize(
    ("arch", "preset", "blocks", "block_type"),
    [(BERT, "bert-base", 12, "bert_block"), (VIT, "vit-large", 24, "vit_block")],
)
def test_preset_has_embedding_blocks_and_head(
    arch: Any, preset: str, blocks: int, block_type: str
) -> None:
    description = describe_with(arch, arch.presets[preset], name=preset)
    layers = description.layers
    assert [layer.kind for layer in layers] == ["embedding", *["block"] * blocks, "head"]
    assert [layer.name for layer in layers[1:-1]] == [f"blocks.{i}" for i in range(blocks)]
    assert {layer.layer_type for layer in description.blocks} == {block_type}
    assert all(layer.attention_flops_per_sample > 0 for layer in description.blocks)
    assert layers[-1].loss_bytes_per_sample == layers[-1].output_bytes_per_sample
    assert description.name == preset


def test_bert_base_parameter_count() -> None:
    # h=768, ffn 3072, vocab 30522, 512 positions, 2 token types, 12 layers, tied decoder:
    #   embedding (30522 + 512 + 2) * 768 + 2 * 768 (LayerNorm)            = 23_837_184
    #   block 4*768^2 + 2*768*3072 + 3072 + 9*768 (q/k/v/o, FFN, biases, 2 norms)
    #         = 7_087_872, times 12                                         = 85_054_464
    #   head  768^2 + 3*768 (transform dense, bias, LayerNorm) + 30522 (bias) = 622_650
    # = 109_514_298, transformers' BertForMaskedLM(bert-base-uncased) count.
    assert describe_with(BERT, BERT.presets["bert-base"]).params == 109_514_298


def test_vit_base_parameter_count() -> None:
    # h=768, ffn 3072, 16x16 patches of 3 channels, 197 tokens, 12 layers, 1000 labels:
    #   embedding 768*768 + 768 (patch conv) + 768 (CLS) + 197*768 (positions) = 742_656
    #   block 7_087_872 (as BERT's: q/k/v/o, FFN, biases, 2 norms), times 12  = 85_054_464
    #   head  2*768 (LayerNorm) + 768*1000 + 1000 (classifier)                = 770_536
    # = 86_567_656, transformers' ViTForImageClassification(vit-base-patch16-224) count.
    assert describe_with(VIT, VIT.presets["vit-base"]).params == 86_567_656


def test_size_flags_map_to_config_keys() -> None:
    assert BERT.size_keys["vocab"] == "vocab_size"
    assert BERT.size_keys["positions"] == "max_position_embeddings"
    assert "kv_heads" not in BERT.size_keys
    assert VIT.size_keys == {
        "layers": "num_hidden_layers",
        "hidden": "hidden_size",
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
    }
