"""GPT-2 style decoders (transformers ``gpt2``): learned positions, pre-norm blocks, tied head."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, PretrainedConfig, PreTrainedModel

from partita.formats import LayerDescription, ModelDescription
from partita.models.attention import Attends
from partita.models.families._attention_cost import causal_attention, with_attention
from partita.models.families._text import causal_lm_batch
from partita.models.families.base import Family, StateDict
from partita.models.heads import merge_heads, split_heads
from partita.models.layered import Activations, LayeredModel, TiedParameters
from partita.models.losses import causal_lm_loss
from partita.models.tp_layout import TPLayout
from partita.models.validation import require_divisible, require_family_config

FP32_BYTES = 4

_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
PRESETS: dict[str, dict[str, object]] = {
    "gpt-tiny": {
        "model_type": "gpt2",
        "n_layer": 4,
        "n_embd": 64,
        "n_head": 4,
        "n_positions": 128,
        "vocab_size": 512,
        "bos_token_id": 0,
        "eos_token_id": 0,
        **_NO_DROPOUT,
    },
    "gpt2": {
        "model_type": "gpt2",
        "n_layer": 12,
        "n_embd": 768,
        "n_head": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
    "gpt2-medium": {
        "model_type": "gpt2",
        "n_layer": 24,
        "n_embd": 1024,
        "n_head": 16,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
    "gpt2-xl": {
        "model_type": "gpt2",
        "n_layer": 48,
        "n_embd": 1600,
        "n_head": 25,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
}


def _ffn_size(config: GPT2Config) -> int:
    return config.n_inner or 4 * config.n_embd


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
        self.fc_in = nn.Linear(config.n_embd, _ffn_size(config))
        self.fc_out = nn.Linear(_ffn_size(config), config.n_embd)
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


def describe(config: PretrainedConfig, seq_len: int, name: str) -> ModelDescription:
    check_config(config)
    if seq_len > config.n_positions:
        raise ValueError(f"gpt: seq_len {seq_len} exceeds n_positions {config.n_positions}")
    h, a, f, v, s = config.n_embd, config.n_head, _ffn_size(config), config.vocab_size, seq_len
    tied = config.tie_word_embeddings
    block_params = 4 * h * h + 2 * h * f + f + 9 * h
    # Matmul FLOPs (2 per multiply-add); attention scores and mixing counted dense.
    block_fwd = 2 * s * (4 * h * h + 2 * h * f) + 4 * s * s * h
    head_fwd = 2 * s * h * v
    # Saved for backward, in elements: norm inputs/outputs, q/k/v/attention output, FFN
    # activations, and SDPA's per-head log-sum-exp. An estimate; the profiler measures.
    block_act = s * (8 * h + 2 * f) + a * s
    layers = [
        _layer(
            "embedding",
            "embedding",
            "gpt_embedding",
            config,
            s,
            params=(v + config.n_positions) * h,
            fwd=0,
            act=s * h,
        ),
        *(
            _layer(
                f"blocks.{i}",
                "block",
                "gpt_block",
                config,
                s,
                params=block_params,
                fwd=block_fwd,
                act=block_act,
            )
            for i in range(config.n_layer)
        ),
        _layer(
            "head",
            "head",
            "gpt_head",
            config,
            s,
            params=2 * h + (0 if tied else v * h),
            fwd=head_fwd,
            act=2 * s * h,  # ln_f's input and output; the loss: loss_bytes_per_sample
        ),
    ]
    attention = causal_attention(s, h)
    layers = [with_attention(x, attention) if x.kind == "block" else x for x in layers]
    return ModelDescription(
        name=name,
        family="gpt",
        hidden_size=h,
        num_heads=a,
        num_kv_heads=a,
        ffn_size=f,
        vocab_size=v,
        num_labels=0,
        seq_len=s,
        activation_bytes_per_element=FP32_BYTES,
        layers=tuple(layers),
        source={"model_type": "gpt2", "tied_embeddings": str(tied).lower()},
    )


def _layer(
    name: str,
    kind: str,
    layer_type: str,
    config: GPT2Config,
    s: int,
    *,
    params: int,
    fwd: float,
    act: float,
) -> LayerDescription:
    is_block = kind == "block"
    return LayerDescription(
        name=name,
        kind=kind,
        layer_type=layer_type,
        hidden_size=config.n_embd,  # type: ignore[arg-type]
        num_heads=config.n_head if is_block else 0,
        num_kv_heads=config.n_head if is_block else 0,
        ffn_size=_ffn_size(config) if is_block else 0,
        seq_len=s,
        params=params,
        forward_flops_per_sample=float(fwd),
        backward_flops_per_sample=float(2 * fwd),
        activation_bytes_per_sample=float(act * FP32_BYTES),
        output_bytes_per_sample=float(
            (config.vocab_size if kind == "head" else config.n_embd) * s * FP32_BYTES
        ),
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
    describe=describe,
    tp_layouts=tp_layouts,
    synthetic_batch=causal_lm_batch,
    reference_model=reference_model,
    reference_outputs=reference_outputs,
    from_hf_state_dict=from_hf_state_dict,
    to_hf_state_dict=to_hf_state_dict,
    default_seq_len=lambda config: min(config.n_positions, 1024),
    presets=PRESETS,
)
