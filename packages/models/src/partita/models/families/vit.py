"""Vision Transformers (transformers ``vit``): patch convolution + CLS token, pre-norm blocks."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, ViTConfig, ViTForImageClassification

from partita.formats import LayerDescription, ModelDescription
from partita.models.attention import Attends
from partita.models.families._attention_cost import full_attention, with_attention
from partita.models.families._vision import (
    FP32_BYTES,
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
from partita.models.families.base import Family, StateDict
from partita.models.heads import merge_heads, split_heads
from partita.models.layered import Activations, LayeredModel
from partita.models.losses import classification_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_divisible, require_family_config, require_positive

_NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
PRESETS: dict[str, dict[str, object]] = {
    "vit-tiny": {
        "model_type": "vit",
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "intermediate_size": 256,
        "num_labels": 10,
        **_NO_DROPOUT,
    },
    "vit-base": {
        "model_type": "vit",
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "intermediate_size": 3072,
        "num_labels": 1000,
    },
    "vit-large": {
        "model_type": "vit",
        "image_size": 224,
        "patch_size": 16,
        "hidden_size": 1024,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "intermediate_size": 4096,
        "num_labels": 1000,
    },
}


def _num_patches(config: ViTConfig) -> int:
    # The convolution drops a remainder that the patch does not cover, as in transformers.
    (height, width), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    return (height // patch_h) * (width // patch_w)


def _seq_len(config: ViTConfig) -> int:
    return _num_patches(config) + 1  # the CLS token


class ViTEmbedding(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        patch = pair(config.patch_size)
        hidden = config.hidden_size
        self.projection = nn.Conv2d(config.num_channels, hidden, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.empty(1, 1, hidden))
        self.position_embeddings = nn.Parameter(torch.empty(1, _seq_len(config), hidden))
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
    if _num_patches(config) == 0:
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


def describe(config: PretrainedConfig, seq_len: int, name: str) -> ModelDescription:
    check_config(config)
    check_seq_len(seq_len, _seq_len(config), "vit")
    h, a, f, s = config.hidden_size, config.num_attention_heads, config.intermediate_size, seq_len
    labels = config.num_labels
    patch_h, patch_w = pair(config.patch_size)
    kernel = config.num_channels * patch_h * patch_w  # inputs of one patch's projection
    qkv_bias = 3 * h if config.qkv_bias else 0
    block_params = 4 * h * h + qkv_bias + h + 2 * h * f + f + h + 4 * h
    # Matmul and convolution FLOPs (2 per multiply-add); attention scores and mixing dense.
    # Backward is twice forward, except the patch convolution: the pixels need no gradient,
    # so only its weight gradient is computed.
    embed_fwd = 2 * _num_patches(config) * kernel * h
    block_fwd = 2 * s * (4 * h * h + 2 * h * f) + 4 * s * s * h
    head_fwd = 2 * h * labels
    # Saved for backward, in elements: norm inputs/outputs, q/k/v/attention output, FFN
    # activations and SDPA's per-head log-sum-exp; the embedding keeps the pixels for the
    # convolution's weight gradient. An estimate; the profiler measures.
    block_act = s * (8 * h + 2 * f) + a * s
    layers = [
        _layer(
            ("embedding", "embedding", "vit_embedding"),
            config,
            s,
            params=kernel * h + h + h + s * h,  # projection, its bias, CLS token, positions
            flops=(embed_fwd, embed_fwd),
            act=config.num_channels * _pixels(config) + s * h,
        ),
        *(
            _layer(
                (f"blocks.{i}", "block", "vit_block"),
                config,
                s,
                params=block_params,
                flops=(block_fwd, 2 * block_fwd),
                act=block_act,
            )
            for i in range(config.num_hidden_layers)
        ),
        _layer(
            ("head", "head", "vit_head"),
            config,
            s,
            params=2 * h + h * labels + labels,
            flops=(head_fwd, 2 * head_fwd),
            act=2 * s * h,  # the norm's input and output; the loss: loss_bytes_per_sample
        ),
    ]
    attention = full_attention(s, s, h)
    layers = [with_attention(x, attention) if x.kind == "block" else x for x in layers]
    return ModelDescription(
        name=name,
        family="vit",
        hidden_size=h,
        num_heads=a,
        num_kv_heads=a,
        ffn_size=f,
        vocab_size=0,
        num_labels=labels,
        seq_len=s,
        activation_bytes_per_element=FP32_BYTES,
        layers=tuple(layers),
        source={
            "model_type": "vit",
            "image_size": "x".join(map(str, pair(config.image_size))),
            "patch_size": "x".join(map(str, pair(config.patch_size))),
        },
    )


def _pixels(config: ViTConfig) -> int:
    height, width = pair(config.image_size)
    return height * width


def _layer(
    identity: tuple[str, str, str],
    config: ViTConfig,
    s: int,
    *,
    params: int,
    flops: tuple[float, float],
    act: float,
) -> LayerDescription:
    """``identity`` is (name, kind, layer_type); ``flops`` (forward, backward) per sample."""
    name, kind, layer_type = identity
    is_block = kind == "block"
    return LayerDescription(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        layer_type=layer_type,
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads if is_block else 0,
        num_kv_heads=config.num_attention_heads if is_block else 0,
        ffn_size=config.intermediate_size if is_block else 0,
        seq_len=s,
        params=params,
        forward_flops_per_sample=float(flops[0]),
        backward_flops_per_sample=float(flops[1]),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(
            (config.num_labels if kind == "head" else config.hidden_size * s) * FP32_BYTES
        ),
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
    check_seq_len(seq_len, _seq_len(config), "vit")
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
    describe=describe,
    tp_layouts=tp_layouts,
    synthetic_batch=synthetic_batch,
    reference_model=reference_model,
    reference_outputs=reference_outputs,
    from_hf_state_dict=from_hf_state_dict,
    to_hf_state_dict=to_hf_state_dict,
    default_seq_len=_seq_len,
    presets=PRESETS,
)
