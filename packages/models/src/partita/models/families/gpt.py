"""GPT-2 style decoders (transformers ``gpt2``): learned positions, pre-norm blocks, tied head."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel

from partita.formats.architectures.gpt import ARCHITECTURE, PRESETS, ffn_size
from partita.models.attention import Attends
from partita.models.families._text import causal_lm_batch
from partita.models.families.base import (
    Family,
    StateDict,
    default_seq_len_through,
    describe_through,
)
from partita.models.heads import merge_heads, split_heads
from partita.models.layered import Activations, LayeredModel, TiedParameters
from partita.models.losses import causal_lm_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_divisible, require_family_config


class GPTEmbedding(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)

    def forward(self, acts: Activations) -> Activations:
        input_ids_bs = acts["input_ids"]
        positions_s = torch.arange(input_ids_bs.shape[1], device=input_ids_bs.device)
        hidden_bsh = self.wte(input_ids_bs) + self.wpe(positions_s)
        return {"hidden": self.drop(hidden_bsh)}


class CausalSelfAttention(Attends):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        hidden = config.n_embd
        self.head_dim = hidden // config.n_head
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.o_proj = nn.Linear(hidden, hidden)
        self.attn_dropout = config.attn_pdrop
        self.resid_drop = nn.Dropout(config.resid_pdrop)

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            split_heads(p(x_bsh), self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        dropout_p = self.attn_dropout if self.training else 0.0
        out_bhsd = self.core(q, k, v, causal=True, dropout_p=dropout_p)
        return self.resid_drop(self.o_proj(merge_heads(out_bhsd)))


class GPTMLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, ffn_size(config))
        self.fc_out = nn.Linear(ffn_size(config), config.n_embd)
        self.drop = nn.Dropout(config.resid_pdrop)
        if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise ValueError(
                f"activation_function {config.activation_function!r} is not supported for gpt "
                "(supported: gelu_new, gelu_pytorch_tanh, gelu)"
            )
        self.approximate = "none" if config.activation_function == "gelu" else "tanh"

    def forward(self, x_bsh: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.gelu(self.fc_in(x_bsh), approximate=self.approximate)
        return self.drop(self.fc_out(hidden))


class GPTBlock(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPTMLP(config)

    def forward(self, acts: Activations) -> Activations:
        x_bsh = acts["hidden"]
        x_bsh = x_bsh + self.attn(self.ln_1(x_bsh))
        x_bsh = x_bsh + self.mlp(self.ln_2(x_bsh))
        return {**acts, "hidden": x_bsh}


class GPTHead(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, acts: Activations) -> Activations:
        return {"logits": self.lm_head(self.ln_f(acts["hidden"]))}


def check_config(config: PretrainedConfig) -> None:
    require_family_config(config, GPT2Config, "gpt")
    require_divisible(config.n_embd, config.n_head, "n_embd", "n_head")
    if config.add_cross_attention or config.scale_attn_by_inverse_layer_idx:
        raise ValueError(
            "gpt: add_cross_attention and scale_attn_by_inverse_layer_idx are unsupported"
        )
    if config.reorder_and_upcast_attn:
        raise ValueError("gpt: reorder_and_upcast_attn is unsupported")


def build(config: PretrainedConfig) -> LayeredModel:
    check_config(config)
    embedding, head = GPTEmbedding(config), GPTHead(config)
    blocks = [GPTBlock(config) for _ in range(config.n_layer)]
    tied: list[TiedParameters] = []
    if config.tie_word_embeddings:
        head.lm_head.weight = embedding.wte.weight
        last = config.n_layer + 1
        tied.append(TiedParameters(("layers.0.wte.weight", f"layers.{last}.lm_head.weight")))
    return LayeredModel(
        family="gpt",
        layer_names=["embedding", *(f"blocks.{i}" for i in range(config.n_layer)), "head"],
        layer_types=["gpt_embedding", *(["gpt_block"] * config.n_layer), "gpt_head"],
        layers=[embedding, *blocks, head],
        loss_fn=causal_lm_loss,
        tied=tied,
        config=config,
    )


def tp_layouts(config: PretrainedConfig) -> dict[str, TPLayout]:
    return {
        "gpt_embedding": TPLayout(
            vocab_embedding=("wte",),
            sequence_parallel=("drop",),
            replicated_note="position table wpe replicated",
        ),
        "gpt_block": TPLayout(
            colwise=("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.fc_in"),
            rowwise=("attn.o_proj", "mlp.fc_out"),
            sequence_parallel=("ln_1", "ln_2", "attn.resid_drop", "mlp.drop"),
            replicated_note="layer norms replicated",
        ),
        "gpt_head": TPLayout(vocab_head=("lm_head",), sequence_parallel=("ln_f",)),
    }


def reference_model(config: PretrainedConfig) -> PreTrainedModel:
    return GPT2LMHeadModel(config)


def reference_outputs(
    model: PreTrainedModel, batch: Activations
) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    return out.logits, out.loss


# HF GPT-2 stores projections as Conv1D ([in, out]) with q, k, v fused in c_attn.
def from_hf_state_dict(hf: StateDict, config: PretrainedConfig) -> StateDict:
    h, last = config.n_embd, config.n_layer + 1
    ours = {
        "layers.0.wte.weight": hf["transformer.wte.weight"],
        "layers.0.wpe.weight": hf["transformer.wpe.weight"],
        f"layers.{last}.ln_f.weight": hf["transformer.ln_f.weight"],
        f"layers.{last}.ln_f.bias": hf["transformer.ln_f.bias"],
        f"layers.{last}.lm_head.weight": hf.get("lm_head.weight", hf["transformer.wte.weight"]),
    }
    for i in range(config.n_layer):
        src, dst = f"transformer.h.{i}.", f"layers.{i + 1}."
        for norm in ("ln_1", "ln_2"):
            for p in ("weight", "bias"):
                ours[f"{dst}{norm}.{p}"] = hf[f"{src}{norm}.{p}"]
        qkv_w = hf[f"{src}attn.c_attn.weight"].split(h, dim=1)
        qkv_b = hf[f"{src}attn.c_attn.bias"].split(h, dim=0)
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), qkv_w, qkv_b, strict=True):
            ours[f"{dst}attn.{name}.weight"] = w.t().contiguous()
            ours[f"{dst}attn.{name}.bias"] = b.clone()
        for ours_name, hf_name in (
            ("attn.o_proj", "attn.c_proj"),
            ("mlp.fc_in", "mlp.c_fc"),
            ("mlp.fc_out", "mlp.c_proj"),
        ):
            ours[f"{dst}{ours_name}.weight"] = hf[f"{src}{hf_name}.weight"].t().contiguous()
            ours[f"{dst}{ours_name}.bias"] = hf[f"{src}{hf_name}.bias"]
    return ours


def to_hf_state_dict(ours: StateDict, config: PretrainedConfig) -> StateDict:
    last = config.n_layer + 1
    hf = {
        "transformer.wte.weight": ours["layers.0.wte.weight"],
        "transformer.wpe.weight": ours["layers.0.wpe.weight"],
        "transformer.ln_f.weight": ours[f"layers.{last}.ln_f.weight"],
        "transformer.ln_f.bias": ours[f"layers.{last}.ln_f.bias"],
        "lm_head.weight": ours[f"layers.{last}.lm_head.weight"],
    }
    for i in range(config.n_layer):
        src, dst = f"layers.{i + 1}.", f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            for p in ("weight", "bias"):
                hf[f"{dst}{norm}.{p}"] = ours[f"{src}{norm}.{p}"]
        names = ("q_proj", "k_proj", "v_proj")
        hf[f"{dst}attn.c_attn.weight"] = torch.cat(
            [ours[f"{src}attn.{n}.weight"].t() for n in names], 1
        )
        hf[f"{dst}attn.c_attn.bias"] = torch.cat([ours[f"{src}attn.{n}.bias"] for n in names])
        for ours_name, hf_name in (
            ("attn.o_proj", "attn.c_proj"),
            ("mlp.fc_in", "mlp.c_fc"),
            ("mlp.fc_out", "mlp.c_proj"),
        ):
            hf[f"{dst}{hf_name}.weight"] = ours[f"{src}{ours_name}.weight"].t().contiguous()
            hf[f"{dst}{hf_name}.bias"] = ours[f"{src}{ours_name}.bias"]
    return hf


FAMILY = Family(
    name="gpt",
    model_types=("gpt2",),
    unit="tokens",
    check_config=check_config,
    build=build,
    describe=describe_through(ARCHITECTURE),
    tp_layouts=tp_layouts,
    synthetic_batch=causal_lm_batch,
    reference_model=reference_model,
    reference_outputs=reference_outputs,
    from_hf_state_dict=from_hf_state_dict,
    to_hf_state_dict=to_hf_state_dict,
    default_seq_len=default_seq_len_through(ARCHITECTURE),
    presets=PRESETS,
)
