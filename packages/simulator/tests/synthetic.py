"""Hand-made profiles with round numbers, so expected results can be computed by hand."""

from __future__ import annotations

from partita.formats import (
    CollectiveProfile,
    ComputeThroughput,
    Device,
    HardwareProfile,
    LayerDescription,
    LayerMemory,
    LayerStrategy,
    LayerTiming,
    LayerTypeProfile,
    ModelDescription,
    ModelProfile,
    OverlapSlowdown,
    PipelineConfig,
    Plan,
    SyncCost,
    TensorWork,
)

SEQ = 16
HIDDEN = 32
OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
MiB = 2**20
NO_SLOWDOWN = OverlapSlowdown()
DEFAULT_STRATEGY = LayerStrategy()


def description(
    num_blocks: int, *, flops_per_sample: float = 1.0, output_bytes: float | None = None
) -> ModelDescription:
    """Blocks only (no embedding or head), so each stage's work is exactly its blocks.
    ``output_bytes``: what a block passes on per sample (default: its hidden states)."""
    block = dict(
        kind="block",
        layer_type="block",
        hidden_size=HIDDEN,
        num_heads=4,
        num_kv_heads=4,
        ffn_size=4 * HIDDEN,
        seq_len=SEQ,
        params=1000,
        forward_flops_per_sample=flops_per_sample,
        backward_flops_per_sample=2 * flops_per_sample,
        activation_bytes_per_sample=1.0,
        output_bytes_per_sample=float(SEQ * HIDDEN * 4) if output_bytes is None else output_bytes,
    )
    layers = tuple(LayerDescription(name=f"blocks.{i}", **block) for i in range(num_blocks))  # type: ignore[arg-type]
    return ModelDescription(
        name="synthetic",
        family="gpt",
        hidden_size=HIDDEN,
        num_heads=4,
        num_kv_heads=4,
        ffn_size=4 * HIDDEN,
        vocab_size=0,
        num_labels=0,
        seq_len=SEQ,
        activation_bytes_per_element=4,
        layers=layers,
    )


def model_profile(
    *,
    forward_s: float = 1.0,
    backward_s: float = 2.0,
    activation_bytes: float = MiB,
    tps: tuple[int, ...] = (1, 2),
    origin: str = "measured_tp_groups",
    checkpoint_backward_s: float | None = None,
    param_tensors: int = 0,
    backward_peak_bytes: float = 0.0,
) -> ModelProfile:
    """Per-layer times proportional to the per-device micro-batch, divided by tp; with
    ``checkpoint_backward_s``, measured checkpointed passes too (forward as without)."""
    timings = tuple(
        LayerTiming(
            tp=tp,
            sp="none",
            micro_batch=mb,
            seq_len=SEQ,
            forward_s=forward_s * mb / tp,
            backward_s=backward_s * mb / tp,
            origin=origin,
            checkpoint_forward_s=None if checkpoint_backward_s is None else forward_s * mb / tp,
            checkpoint_backward_s=None
            if checkpoint_backward_s is None
            else checkpoint_backward_s * mb / tp,
        )  # type: ignore[arg-type]
        for tp in tps
        for mb in (1, 2, 4)
    )
    memory = tuple(
        LayerMemory(
            tp=tp,
            sp="none",
            seq_len=SEQ,
            param_bytes=4000 // tp,
            grad_bytes=4000 // tp,
            optimizer_bytes=8000 // tp,
            activation_bytes_per_sample=activation_bytes / tp,
            checkpoint_activation_bytes_per_sample=activation_bytes / 8 / tp,
            param_tensors=param_tensors,
            backward_peak_bytes_per_sample=backward_peak_bytes / tp,
        )
        for tp in tps
    )
    return ModelProfile(
        model="synthetic",
        device="test",
        dtype="fp32",
        origin="measured",
        layer_types=(LayerTypeProfile(layer_type="block", timings=timings, memory=memory),),
    )


def hardware(
    *,
    world: int,
    latency_s: float = 0.0,
    p2p_latency_s: float = 0.0,
    bandwidth: float = 1e18,
    overlap: OverlapSlowdown = NO_SLOWDOWN,
    optimizer: TensorWork | None = None,
    fsdp_gather: TensorWork | None = None,
    fsdp_reduce_scatter: TensorWork | None = None,
    ddp_reducer: TensorWork | None = None,
    sync: SyncCost | None = None,
) -> HardwareProfile:
    sizes = [g for g in (2, 4, 8, 16) if g <= world]
    collectives = [
        CollectiveProfile(
            op=op,
            group_size=g,
            placement=placement,
            scope="intra_node",  # type: ignore[arg-type]
            latency_s=latency_s,
            bandwidth_bytes_per_s=bandwidth,
        )
        for op in OPS
        for g in sizes
        for placement in ("consecutive", "strided")
    ]
    collectives += [
        CollectiveProfile(
            op="p2p",
            group_size=2,
            placement=placement,
            scope="intra_node",  # type: ignore[arg-type]
            latency_s=p2p_latency_s,
            bandwidth_bytes_per_s=bandwidth,
        )
        for placement in ("consecutive", "strided")
    ]
    return HardwareProfile(
        name="synthetic",
        origin="measured",
        backend="gloo",
        num_nodes=1,
        devices_per_node=world,
        device=Device(kind="cpu", name="test", memory_bytes=2**34),
        compute=(ComputeThroughput(dtype="fp32", flops_per_s=1e9),),
        collectives=tuple(collectives),
        overlap=overlap,
        optimizer=optimizer,
        fsdp_gather=fsdp_gather,
        fsdp_reduce_scatter=fsdp_reduce_scatter,
        ddp_reducer=ddp_reducer,
        sync=sync,
    )


def plan(
    *,
    world: int,
    stages: tuple[int, ...],
    micro_batches: int,
    global_batch: int,
    schedule: str = "gpipe",
    strategy: LayerStrategy = DEFAULT_STRATEGY,
    chunks: int = 1,
) -> Plan:
    """``stages`` gives each virtual stage's blocks (``chunks`` per rank)."""
    return Plan(
        world_size=world,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=global_batch,
        num_micro_batches=micro_batches,
        pipeline=PipelineConfig(
            degree=len(stages) // chunks,
            schedule=schedule,  # type: ignore[arg-type]
            stage_num_layers=stages,
            chunks=chunks,
        ),
        layers=tuple(strategy for _ in range(sum(stages))),
    )
