"""BERT encoders with the masked-LM head (transformers ``bert``): post-LN blocks, tied decoder."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, PretrainedConfig, PreTrainedModel

from partita.formats.architectures.bert import ARCHITECTURE, PRESETS
from partita.models.attention import Attends
from partita.models.families.base import (
    Family,
    StateDict,
    default_seq_len_through,
    describe_through,
)
from partita.models.heads import merge_heads, split_heads
from partita.models.layered import Activations, LayeredModel, TiedParameters
from partita.models.losses import IGNORE_INDEX, token_classification_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_divisible, require_family_config, require_positive

MASKED_FRACTION = 0.15  # BERT's pre-training share of predicted positions

# transformers' ACT2FN names -> the same function, so the module needs no transformers import.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def padding_bias(attention_mask_bs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, seq]`` 1/0 keep mask -> additive ``[batch, 1, 1, seq]`` bias over the keys."""
    keep_b11s = attention_mask_bs[:, None, None, :].bool()
    zero = torch.zeros((), dtype=dtype, device=attention_mask_bs.device)
    return torch.where(keep_b11s, zero, torch.finfo(dtype).min)


def bias_like(bias: torch.Tensor | None, q_bhsd: torch.Tensor) -> torch.Tensor | None:
    """The bias in the queries' dtype (under autocast the projections run in half precision)."""
    if bias is None or bias.dtype == q_bhsd.dtype:
        return bias
    # float32's minimum overflows to -inf in half precision; clamp so masked scores stay finite.
    return bias.clamp(min=torch.finfo(q_bhsd.dtype).min).to(q_bhsd.dtype)


class BertEmbedding(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.layer_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, acts: Activations) -> Activations:
        input_ids_bs = acts["input_ids"]
        token_types_bs = acts.get("token_type_ids")
        if token_types_bs is None:
            token_types_bs = torch.zeros_like(input_ids_bs)
        positions_s = torch.arange(input_ids_bs.shape[1], device=input_ids_bs.device)
        hidden_bsh = self.word_embeddings(input_ids_bs) + self.token_type_embeddings(token_types_bs)
        hidden_bsh = self.dropout(
            self.layer_norm(hidden_bsh + self.position_embeddings(positions_s))
        )
        out = {"hidden": hidden_bsh}
        # The padding mask becomes an additive bias once here; every block reuses it.
        if "attention_mask" in acts:
            out["attention_bias"] = padding_bias(acts["attention_mask"], hidden_bsh.dtype)
        return out


class BertSelfAttention(Attends):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.head_dim = h // config.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attn_dropout = config.attention_probs_dropout_prob

    def forward(self, x_bsh: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (split_heads(p(x_bsh), self.head_dim) for p in (self.query, self.key, self.value))
        out_bhsd = self.core(
            q,
            k,
            v,
            bias=bias_like(bias, q),
            scale=self.head_dim**-0.5,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        return merge_heads(out_bhsd)


class AddNorm(nn.Module):
    """Post-LN residual: ``LayerNorm(residual + dropout(dense(x)))``."""

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual_bsh: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(residual_bsh + self.dropout(self.dense(x)))


class BertBlock(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_output = AddNorm(config, config.hidden_size)
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACTIVATIONS[config.hidden_act]
        self.output = AddNorm(config, config.intermediate_size)

    def forward(self, acts: Activations) -> Activations:
        x_bsh = acts["hidden"]
        attended_bsh = self.attention(x_bsh, acts.get("attention_bias"))
        x_bsh = self.attention_output(attended_bsh, x_bsh)
        x_bsh = self.output(self.activation(self.intermediate(x_bsh)), x_bsh)
        return {**acts, "hidden": x_bsh}


class HeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = ACTIVATIONS[config.hidden_act]
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.activation(self.dense(x_bsh)))


class BertHead(nn.Module):
    """The masked-LM head: dense + activation + LayerNorm, then the (tied) vocabulary decoder."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = HeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, acts: Activations) -> Activations:
        return {"logits": self.decoder(self.transform(acts["hidden"]))}


def check_config(config: PretrainedConfig) -> None:
    require_family_config(config, BertConfig, "bert")
    for value, name in (
        (config.hidden_size, "hidden_size"),
        (config.num_hidden_layers, "num_hidden_layers"),
        (config.intermediate_size, "intermediate_size"),
        (config.vocab_size, "vocab_size"),
        (config.type_vocab_size, "type_vocab_size"),
        (config.max_position_embeddings, "max_position_embeddings"),
    ):
        require_positive(value, name)
    require_divisible(
        config.hidden_size, config.num_attention_heads, "hidden_size", "num_attention_heads"
    )
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"bert: hidden_act {config.hidden_act!r} is unsupported "
            f"(supported: {', '.join(ACTIVATIONS)})"
        )
    if config.is_decoder or config.add_cross_attention:
        raise ValueError("bert: is_decoder and add_cross_attention are unsupported (encoder only)")
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("bert: only absolute position embeddings are supported")


def build(config: PretrainedConfig) -> LayeredModel:
    check_config(config)
    layers = config.num_hidden_layers
    embedding, head = BertEmbedding(config), BertHead(config)
    blocks = [BertBlock(config) for _ in range(layers)]
    tied: list[TiedParameters] = []
    if config.tie_word_embeddings:
        head.decoder.weight = embedding.word_embeddings.weight
        names = ("layers.0.word_embeddings.weight", f"layers.{layers + 1}.decoder.weight")
        tied.append(TiedParameters(names))
    return LayeredModel(
        family="bert",
        layer_names=["embedding", *(f"blocks.{i}" for i in range(layers)), "head"],
        layer_types=["bert_embedding", *(["bert_block"] * layers), "bert_head"],
        layers=[embedding, *blocks, head],
        loss_fn=token_classification_loss,
        tied=tied,
        config=config,
    )


def tp_layouts(config: PretrainedConfig) -> dict[str, TPLayout]:
    return {
        "bert_embedding": TPLayout(
            vocab_embedding=("word_embeddings",),
            sequence_parallel=("layer_norm", "dropout"),
            replicated_note="position and token-type tables replicated",
        ),
        "bert_block": TPLayout(
            colwise=("attention.query", "attention.key", "attention.value", "intermediate"),
            rowwise=("attention_output.dense", "output.dense"),
            sequence_parallel=(
                "attention_output.dropout",
                "attention_output.layer_norm",
                "output.dropout",
                "output.layer_norm",
            ),
            replicated_note="layer norms replicated",
        ),
        "bert_head": TPLayout(
            vocab_head=("decoder",),
            # dense + activation + LayerNorm act per token, so they run on a sequence shard.
            sequence_parallel=("transform",),
            replicated_note="transform dense and LayerNorm replicated",
        ),
    }


def synthetic_batch(
    config: PretrainedConfig, batch_size: int, seq_len: int, generator: torch.Generator
) -> Activations:
    """Random ids, two segments, padding at the end of the last sample, ~15% masked-LM labels."""
    shape = (batch_size, seq_len)
    input_ids = torch.randint(0, config.vocab_size, shape, generator=generator)
    token_type_ids = torch.zeros(shape, dtype=torch.long)
    if config.type_vocab_size > 1:
        token_type_ids[:, seq_len // 2 :] = 1  # sentence pairs
    attention_mask = torch.ones(shape, dtype=torch.long)
    attention_mask[-1, seq_len - min(seq_len // 4, seq_len - 1) :] = 0  # keeps >= 1 real token
    if config.pad_token_id is not None:
        input_ids[attention_mask == 0] = config.pad_token_id
    picked = (torch.rand(shape, generator=generator) < MASKED_FRACTION) & (attention_mask == 1)
    picked[:, 0] = picked[:, 0] | ~picked.any(dim=1)  # every sample predicts something
    labels = torch.where(picked, input_ids, IGNORE_INDEX)
    return {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }


def reference_model(config: PretrainedConfig) -> PreTrainedModel:
    return BertForMaskedLM(config)


def reference_outputs(
    model: PreTrainedModel, batch: Activations
) -> tuple[torch.Tensor, torch.Tensor]:
    extra = {k: batch[k] for k in ("token_type_ids", "attention_mask") if k in batch}
    out = model(input_ids=batch["input_ids"], labels=batch["labels"], **extra)
    return out.logits, out.loss


_BLOCK_MODULES = {  # ours -> transformers, inside one encoder layer
    "attention.query": "attention.self.query",
    "attention.key": "attention.self.key",
    "attention.value": "attention.self.value",
    "attention_output.dense": "attention.output.dense",
    "attention_output.layer_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense",
    "output.dense": "output.dense",
    "output.layer_norm": "output.LayerNorm",
}


def _names(config: BertConfig) -> dict[str, str]:
    """Our state_dict key -> transformers' key, for every parameter (tied decoder included)."""
    last = config.num_hidden_layers + 1
    names = {
        f"layers.0.{table}.weight": f"bert.embeddings.{table}.weight"
        for table in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    }
    head = {
        "transform.dense": "cls.predictions.transform.dense",
        "transform.layer_norm": "cls.predictions.transform.LayerNorm",
    }
    for p in ("weight", "bias"):
        names[f"layers.0.layer_norm.{p}"] = f"bert.embeddings.LayerNorm.{p}"
        for i in range(config.num_hidden_layers):
            for ours, theirs in _BLOCK_MODULES.items():
                names[f"layers.{i + 1}.{ours}.{p}"] = f"bert.encoder.layer.{i}.{theirs}.{p}"
        for ours, theirs in head.items():
            names[f"layers.{last}.{ours}.{p}"] = f"{theirs}.{p}"
    names[f"layers.{last}.decoder.weight"] = "cls.predictions.decoder.weight"
    names[f"layers.{last}.decoder.bias"] = "cls.predictions.decoder.bias"
    return names


def from_hf_state_dict(hf: StateDict, config: PretrainedConfig) -> StateDict:
    names = _names(config)
    last = config.num_hidden_layers + 1
    if config.tie_word_embeddings:  # a tied checkpoint holds only the embedding
        names[f"layers.{last}.decoder.weight"] = "bert.embeddings.word_embeddings.weight"
    # transformers ties decoder.bias to cls.predictions.bias and often stores only the latter;
    # untied, the decoder's own bias is the one the forward uses.
    if "cls.predictions.decoder.bias" not in hf:
        names[f"layers.{last}.decoder.bias"] = "cls.predictions.bias"
    return {ours: hf[theirs] for ours, theirs in names.items()}


def to_hf_state_dict(ours: StateDict, config: PretrainedConfig) -> StateDict:
    hf = {theirs: ours[key] for key, theirs in _names(config).items()}
    hf["cls.predictions.bias"] = hf["cls.predictions.decoder.bias"]
    return hf


FAMILY = Family(
    name="bert",
    model_types=("bert",),
    unit="tokens",
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
