"""Vocabulary shared by several formats."""

from __future__ import annotations

from typing import Literal, get_args

SpMode = Literal["none", "megatron", "ulysses"]
DpMode = Literal["ddp", "zero1", "zero2", "zero3"]
Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["gpipe", "1f1b", "interleaved-1f1b", "zb-h1"]
# Activation checkpointing of a block: none, the attention core only (recomputed in the
# backward, the rest kept: Megatron's "selective"), every second matrix multiplication and
# all the elementwise work (the other matmuls' and the attention kernel's outputs kept:
# TorchTitan's "selective op"), or the whole block. Ordered from the most kept to the least.
Ckpt = Literal["none", "attention", "selective-op", "full"]
MeshAxis = Literal["pp", "dp", "tp"]
Family = Literal["gpt", "llama", "bert", "t5", "vit", "swin"]
LayerKind = Literal["embedding", "block", "head"]
# The attention kernel a run trained with or a profile measured with; "" in files that do
# not say (written before it was recorded).
AttentionKernel = Literal["", "flash", "sdpa", "eager"]

SP_MODES: tuple[str, ...] = get_args(SpMode)
DP_MODES: tuple[str, ...] = get_args(DpMode)
PRECISIONS: tuple[str, ...] = get_args(Precision)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
CKPT_MODES: tuple[str, ...] = get_args(Ckpt)
# The modes that run the whole layer under checkpointing: it is recomputed once per backward
# pass through it, so a split backward's W would recompute it again for every weight branch
# (the executor and the simulator then run and price W as the chunk's whole backward).
WHOLE_LAYER_CKPT_MODES: tuple[str, ...] = ("selective-op", "full")
MESH_AXES: tuple[str, ...] = get_args(MeshAxis)
FAMILIES: tuple[str, ...] = get_args(Family)
ATTENTION_KERNELS: tuple[str, ...] = tuple(k for k in get_args(AttentionKernel) if k)

BYTES_PER_ELEMENT: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}
# DDP's default bucket size (``bucket_cap_mb``): the executor's layer-wise trainer buckets its
# gradient all-reduces by it, the simulator prices them so and the profiler fits DDP with it.
DDP_BUCKET_BYTES = 25 * 2**20
