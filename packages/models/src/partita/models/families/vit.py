"""Vision Transformers (transformers ``vit``): patch convolution + CLS token, pre-norm blocks."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, ViTConfig, ViTForImageClassification

from partita.formats.architectures.vit import ARCHITECTURE, PRESETS, image_seq_len, num_patches
from partita.models.attention import Attends
from partita.models.families._vision import (
    KeyTriple,
    activation,
    check_classification,
    check_image_geometry,
    check_pixels,
    check_seq_len,
    image_batch,
    pair,
    pick,
)
from partita.models.families.base import (
    Family,
    StateDict,
    default_seq_len_through,
    describe_through,
)
from partita.models.heads import merge_heads, split_heads
from partita.models.layered import Activations, LayeredModel
from partita.models.losses import classification_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_divisible, require_family_config, require_positive


class ViTEmbedding(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        patch = pair(config.patch_size)
        hidden = config.hidden_size
        self.projection = nn.Conv2d(config.num_channels, hidden, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.empty(1, 1, hidden))
        self.position_embeddings = nn.Parameter(torch.empty(1, image_seq_len(config), hidden))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        for param in (self.cls_token, self.position_embeddings):
            nn.init.trunc_normal_(param, std=config.initializer_range)

    def forward(self, acts: Activations) -> Activations:
        pixels_bchw = acts["pixel_values"]
        check_pixels(pixels_bchw, self.config, "vit")
        # The batch stays float32 when the model runs in half precision (transformers casts too).
        pixels_bchw = pixels_bchw.to(self.projection.weight.dtype)
        patches_bsh = self.projection(pixels_bchw).flatten(2).transpose(1, 2)
        cls_b1h = self.cls_token.expand(patches_bsh.shape[0], -1, -1)
        hidden_bsh = torch.cat((cls_b1h, patches_bsh), dim=1) + self.position_embeddings
        return {"hidden": self.dropout(hidden_bsh)}


class ViTSelfAttention(Attends):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.head_dim = hidden // config.num_attention_heads
        self.q_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, hidden, bias=config.qkv_bias)
        self.o_proj = nn.Linear(hidden, hidden)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            split_heads(p(x_bsh), self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        dropout_p = self.attn_dropout if self.training else 0.0
        out_bhsd = self.core(q, k, v, scale=self.head_dim**-0.5, dropout_p=dropout_p)
        return self.o_proj(merge_heads(out_bhsd))


class ViTMLP(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config, "vit")

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x_bsh)))


class ViTBlock(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTSelfAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, acts: Activations) -> Activations:
        x_bsh = acts["hidden"]
        x_bsh = self.dropout(self.attention(self.layernorm_before(x_bsh))) + x_bsh
        x_bsh = self.dropout(self.mlp(self.layernorm_after(x_bsh))) + x_bsh
        return {**acts, "hidden": x_bsh}


class ViTHead(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, acts: Activations) -> Activations:
        # transformers normalises every token, then classifies the CLS token.
        normed_bsh = self.layernorm(acts["hidden"])
        return {"logits": self.classifier(normed_bsh[:, 0, :])}


def check_config(config: PretrainedConfig) -> None:
    require_family_config(config, ViTConfig, "vit")
    for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size"):
        require_positive(getattr(config, name), name)
    require_divisible(
        config.hidden_size, config.num_attention_heads, "hidden_size", "num_attention_heads"
    )
    check_image_geometry(config, "vit")
    if num_patches(config) == 0:
        raise ValueError(f"vit: patch_size {config.patch_size} exceeds image_size")
    check_classification(config, "vit")
    activation(config, "vit")


def build(config: PretrainedConfig) -> LayeredModel:
    check_config(config)
    n = config.num_hidden_layers
    return LayeredModel(
        family="vit",
        layer_names=["embedding", *(f"blocks.{i}" for i in range(n)), "head"],
        layer_types=["vit_embedding", *(["vit_block"] * n), "vit_head"],
        layers=[ViTEmbedding(config), *(ViTBlock(config) for _ in range(n)), ViTHead(config)],
        loss_fn=classification_loss,
        config=config,
    )


def tp_layouts(config: PretrainedConfig) -> dict[str, TPLayout]:
    return {
        "vit_embedding": TPLayout(
            sequence_parallel=("dropout",),
            replicated_note="patch convolution, CLS token and position table replicated",
        ),
        "vit_block": TPLayout(
            colwise=("attention.q_proj", "attention.k_proj", "attention.v_proj", "mlp.fc1"),
            rowwise=("attention.o_proj", "mlp.fc2"),
            sequence_parallel=("layernorm_before", "layernorm_after", "dropout"),
            replicated_note="layer norms replicated",
        ),
        "vit_head": TPLayout(
            vocab_head=("classifier",),
            sequence_parallel=("layernorm",),
            replicated_note="classifier split over labels",
        ),
    }


def synthetic_batch(
    config: PretrainedConfig, batch_size: int, seq_len: int, generator: torch.Generator
) -> Activations:
    check_seq_len(seq_len, image_seq_len(config), "vit")
    return image_batch(config, batch_size, generator)


def reference_model(config: PretrainedConfig) -> PreTrainedModel:
    return ViTForImageClassification(config)


def reference_outputs(
    model: PreTrainedModel, batch: Activations
) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
    return out.logits, out.loss


_BLOCK_MODULES = (  # (ours, transformers in memory, transformers checkpoint), per block
    ("layernorm_before", "layernorm_before", "layernorm_before"),
    ("attention.q_proj", "attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.v_proj", "attention.attention.value"),
    ("attention.o_proj", "attention.o_proj", "attention.output.dense"),
    ("layernorm_after", "layernorm_after", "layernorm_after"),
    ("mlp.fc1", "mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "mlp.fc2", "output.dense"),
)


_QKV = ("attention.q_proj", "attention.k_proj", "attention.v_proj")


def _keys(config: ViTConfig) -> list[KeyTriple]:
    last = config.num_hidden_layers + 1
    embedding = "vit.embeddings."
    keys: list[tuple[str, str]] = [
        ("layers.0.cls_token", f"{embedding}cls_token"),
        ("layers.0.position_embeddings", f"{embedding}position_embeddings"),
        ("layers.0.projection.weight", f"{embedding}patch_embeddings.projection.weight"),
        ("layers.0.projection.bias", f"{embedding}patch_embeddings.projection.bias"),
        (f"layers.{last}.layernorm.weight", "vit.layernorm.weight"),
        (f"layers.{last}.layernorm.bias", "vit.layernorm.bias"),
        (f"layers.{last}.classifier.weight", "classifier.weight"),
        (f"layers.{last}.classifier.bias", "classifier.bias"),
    ]
    triples = [(ours, hf, hf) for ours, hf in keys]
    for i in range(config.num_hidden_layers):
        for ours, current, legacy in _BLOCK_MODULES:
            biased = config.qkv_bias or ours not in _QKV
            for param in ("weight", "bias") if biased else ("weight",):
                triples.append(
                    (
                        f"layers.{i + 1}.{ours}.{param}",
                        f"vit.layers.{i}.{current}.{param}",
                        f"vit.encoder.layer.{i}.{legacy}.{param}",
                    )
                )
    return triples


def from_hf_state_dict(hf: StateDict, config: PretrainedConfig) -> StateDict:
    return {ours: pick(hf, current, legacy) for ours, current, legacy in _keys(config)}


def to_hf_state_dict(ours: StateDict, config: PretrainedConfig) -> StateDict:
    return {current: ours[name] for name, current, _ in _keys(config)}


FAMILY = Family(
    name="vit",
    model_types=("vit",),
    unit="samples",
    check_config=check_config,
    build=build,
    describe=describe_through(ARCHITECTURE),
    tp_layouts=tp_layouts,
    synthetic_batch=synthetic_batch,
    reference_model=reference_model,
    reference_outputs=reference_outputs,
    from_hf_state_dict=from_hf_state_dict,
    to_hf_state_dict=to_hf_state_dict,
    default_seq_len=default_seq_len_through(ARCHITECTURE),
    presets=PRESETS,
)
