"""Plans to and from Megatron-LM arguments, TorchTitan TOML and DeepSpeed JSON (torch-free).

Round trips over grids of settings, the real files each project ships (``interop_fixtures``,
see its README), and every flag or key written checked against the names each trainer
defines in the version read (listed below, from its source).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from pathlib import Path

import pytest

from partita.formats import LayerStrategy, ModelDescription
from partita.formats.architectures import describe_config, presets
from partita.simulator.interop import deepspeed, megatron, torchtitan
from partita.simulator.interop.uniform import Uniform, layer_strategies, uniform_of

FIXTURES = Path(__file__).parent / "interop_fixtures"

# Every flag the exporter may write, as defined in NVIDIA/Megatron-LM
# megatron/training/arguments.py at commit 000c4ac24f61159c138b0975def722c65245983c
# (_add_network_size_args, _add_training_args, _add_mixed_precision_args,
# _add_distributed_args, _add_data_args, _add_checkpointing_args).
MEGATRON_FLAGS = {
    "--num-layers",
    "--hidden-size",
    "--ffn-hidden-size",
    "--num-attention-heads",
    "--group-query-attention",
    "--num-query-groups",
    "--max-position-embeddings",
    "--position-embedding-type",
    "--normalization",
    "--swiglu",
    "--untie-embeddings-and-output-weights",
    "--disable-bias-linear",
    "--seq-length",
    "--micro-batch-size",
    "--global-batch-size",
    "--recompute-activations",
    "--recompute-granularity",
    "--recompute-method",
    "--recompute-num-layers",
    "--recompute-modules",
    "--sequence-parallel",
    "--no-gradient-accumulation-fusion",
    "--fp16",
    "--bf16",
    "--tensor-model-parallel-size",
    "--pipeline-model-parallel-size",
    "--decoder-first-pipeline-num-layers",
    "--decoder-last-pipeline-num-layers",
    "--pipeline-model-parallel-layout",
    "--num-layers-per-virtual-pipeline-stage",
    "--num-virtual-stages-per-pipeline-rank",
    "--use-distributed-optimizer",
    "--use-megatron-fsdp",
    "--data-parallel-sharding-strategy",
    "--use-torch-fsdp2",
    "--torch-fsdp2-no-reshard-after-forward",
    "--context-parallel-size",
    "--ckpt-format",
}

PRECISIONS = ("fp32", "bf16", "fp16")
CKPTS = ("none", "attention", "selective-op", "full")
DP_MODES = ("ddp", "zero1", "zero2", "zero3")


def _model(preset: str, **changes: object) -> ModelDescription:
    config = {**presets()[preset], **changes}
    return describe_config(config, name=preset if not changes else f"{preset}-custom")


@pytest.fixture(scope="module")
def llama() -> ModelDescription:
    """16 blocks, grouped-query attention (8 heads, 4 kv heads): tp up to 4 splits it."""
    return _model("llama-tiny", num_hidden_layers=16, num_attention_heads=8, num_key_value_heads=4)


def _grid(world: int, *, pps: tuple[int, ...] = (1, 2, 4)) -> list[Uniform]:
    """Uniforms over degrees, modes, schedules and precisions (some not expressible)."""
    out = []
    for tp, pp, sp, dp, ckpt, precision in itertools.product(
        (1, 2, 4), pps, ("none", "megatron", "ulysses"), DP_MODES, CKPTS, PRECISIONS
    ):
        if world % (tp * pp):
            continue
        schedules = [("1f1b", 1), ("gpipe", 1), ("zb-h1", 1)]
        if pp > 1:
            schedules.append(("interleaved-1f1b", 2))
        for schedule, chunks in schedules:
            out.append(
                Uniform(
                    world_size=world,
                    global_batch_size=64,
                    micro_batch_size=2,
                    precision=precision,  # type: ignore[arg-type]
                    tp=tp,
                    pp=pp,
                    sp=sp,  # type: ignore[arg-type]
                    dp=dp,  # type: ignore[arg-type]
                    ckpt=ckpt,  # type: ignore[arg-type]
                    schedule=schedule,  # type: ignore[arg-type]
                    chunks=chunks,
                    vocab_sp=sp == "megatron" and tp > 1,
                )
            )
    return out


def _one_line(error: pytest.ExceptionInfo[ValueError]) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- uniform


def test_uniform_plan_round_trip(llama: ModelDescription) -> None:
    u = Uniform(
        world_size=16,
        global_batch_size=64,
        micro_batch_size=2,
        precision="bf16",
        tp=2,
        pp=2,
        sp="megatron",
        dp="zero1",
        ckpt="attention",
        schedule="interleaved-1f1b",
        chunks=2,
        vocab_sp=True,
    )
    plan = u.to_plan(llama)
    assert plan.vocab.sp and plan.pipeline.chunks == 2
    assert plan.micro_batch_size == 2 * u.data_parallel
    assert uniform_of(plan) == u
    assert u.strategy_text() == (
        "tp=2,pp=2,sp=megatron,dp=zero1,ckpt=attention,mb=2,schedule=interleaved-1f1b,chunks=2"
    )


def test_to_plan_errors_are_one_line(llama: ModelDescription) -> None:
    with pytest.raises(ValueError) as error:
        Uniform(
            world_size=64,
            global_batch_size=64,
            micro_batch_size=1,
            precision="bf16",
            tp=8,
            pp=8,
            chunks=1,
        ).to_plan(llama)
    assert "tp=8" in _one_line(error) and "--uniform" not in _one_line(error)
    with pytest.raises(ValueError) as error:
        Uniform(world_size=16, global_batch_size=60, micro_batch_size=2, precision="bf16")
    assert "global batch 60" in _one_line(error)


def test_uniform_of_names_the_first_block_that_differs(llama: ModelDescription) -> None:
    plan = Uniform(
        world_size=8, global_batch_size=16, micro_batch_size=1, precision="bf16", tp=2, dp="zero1"
    ).to_plan(llama)
    layers = list(plan.layers)
    layers[5] = dataclasses.replace(layers[5], ckpt="full")
    layers[9] = dataclasses.replace(layers[9], ckpt="full")
    layers[12] = LayerStrategy(tp=4, dp="zero1")
    layerwise = dataclasses.replace(plan, layers=tuple(layers))
    with pytest.raises(ValueError) as error:
        uniform_of(layerwise)
    text = _one_line(error)
    assert "block 5" in text and "ckpt full" in text and "ckpt none" in text
    assert layer_strategies(layerwise) == [
        plan.layers[0],
        dataclasses.replace(plan.layers[0], ckpt="full"),
        LayerStrategy(tp=4, dp="zero1"),
    ]
    odd_vocab = dataclasses.replace(plan, vocab=dataclasses.replace(plan.vocab, dp="zero3"))
    with pytest.raises(ValueError) as error:
        uniform_of(odd_vocab)
    assert "vocab dp zero3" in _one_line(error)


# --------------------------------------------------------------------------- nearest


def test_nearest_lists_what_changed() -> None:
    u = Uniform(
        world_size=16,
        global_batch_size=64,
        micro_batch_size=2,
        precision="fp16",
        tp=2,
        pp=2,
        sp="ulysses",
        dp="zero2",
        schedule="gpipe",
    )
    near, changes = megatron.nearest(u)
    assert (near.sp, near.dp, near.schedule, near.vocab_sp) == ("megatron", "zero1", "1f1b", True)
    assert changes[0].startswith("sp ulysses -> megatron (")
    assert any(c.startswith("dp zero2 -> zero1 (distributed optimizer") for c in changes)
    assert megatron.unsupported(near) == [] and megatron.nearest(near) == (near, [])
    assert any("Ulysses" in reason for reason in megatron.unsupported(u))

    near, changes = torchtitan.nearest(u)
    assert (near.sp, near.dp, near.precision, near.schedule) == (
        "megatron",
        "zero2",
        "bf16",
        "gpipe",
    )
    assert any(c.startswith("precision fp16 -> bf16") for c in changes)

    near, changes = deepspeed.nearest(u)
    assert (near.tp, near.pp, near.sp, near.micro_batch_size) == (2, 1, "none", 2)
    assert any(c.startswith("pp 2 -> 1") for c in changes)


def test_each_trainer_gets_its_own_sub_block_recomputation() -> None:
    u = Uniform(
        world_size=8,
        global_batch_size=16,
        micro_batch_size=2,
        precision="bf16",
        ckpt="selective-op",
    )
    # TorchTitan's "op" policy is selective-op itself; Megatron-LM has no such module list.
    assert torchtitan.nearest(u) == (u, [])
    near, changes = megatron.nearest(u)
    assert near.ckpt == "full"
    assert changes == [
        "ckpt selective-op -> full (whole blocks recomputed: they keep less than "
        "selective-op, so the plan still fits)"
    ]
    attention = dataclasses.replace(u, ckpt="attention")
    assert megatron.nearest(attention) == (attention, [])
    near, changes = torchtitan.nearest(attention)
    assert near.ckpt == "selective-op"
    assert changes[0].startswith("ckpt attention -> selective-op (TorchTitan's op-level")


def test_nearest_is_expressible_for_every_setting() -> None:
    for trainer in (megatron, torchtitan, deepspeed):
        for u in _grid(16):
            near, changes = trainer.nearest(u)
            assert trainer.unsupported(near) == [], (trainer.TRAINER, u)
            assert bool(changes) == bool(trainer.unsupported(u)), (trainer.TRAINER, u)
            assert all("\n" not in c for c in changes)


def test_deepspeed_nearest_keeps_the_global_batch() -> None:
    u = Uniform(world_size=16, global_batch_size=48, micro_batch_size=3, precision="bf16", pp=4)
    near, changes = deepspeed.nearest(u)
    # 16 data-parallel ranks take 3 samples each: one micro-batch of 3.
    assert (near.pp, near.micro_batch_size, near.global_batch_size) == (1, 3, 48)
    u = Uniform(world_size=16, global_batch_size=32, micro_batch_size=8, precision="bf16", pp=4)
    near, changes = deepspeed.nearest(u)
    assert (near.micro_batch_size, near.num_micro_batches) == (2, 1)
    assert "micro-batch 8 -> 2" in changes[0]


# --------------------------------------------------------------------------- Megatron-LM


def _flags(text: str) -> set[str]:
    return {word for word in text.split() if word.startswith("--")}


def test_megatron_round_trip_over_a_grid(llama: ModelDescription) -> None:
    seen = 0
    for u in _grid(16):
        if megatron.unsupported(u):
            continue
        text = megatron.export(u, llama)
        assert _flags(text) <= MEGATRON_FLAGS, _flags(text) - MEGATRON_FLAGS
        assert megatron.import_config(text, world_size=16, source="args.sh") == u
        seen += 1
    assert seen > 200


def test_megatron_uneven_stages_use_a_layout() -> None:
    model = _model("llama-tiny", num_hidden_layers=10)
    u = Uniform(
        world_size=8,
        global_batch_size=32,
        micro_batch_size=1,
        precision="bf16",
        pp=4,
        schedule="interleaved-1f1b",
        chunks=2,
    )
    text = megatron.export(u, model)
    assert "--pipeline-model-parallel-layout Et*1|t*2|t*2|t*1|t*1|t*1|t*1|t*1L" in text
    assert "--num-virtual-stages-per-pipeline-rank" not in text
    assert megatron.import_config(text, world_size=8, source="args") == u


def test_megatron_export_writes_the_model_shape() -> None:
    model = _model("llama3-8b")
    u = Uniform(
        world_size=64,
        global_batch_size=512,
        micro_batch_size=1,
        precision="bf16",
        tp=8,
        sp="megatron",
        dp="zero1",
        ckpt="full",
        vocab_sp=True,
    )
    lines = megatron.export(u, model).splitlines()
    assert all(line.endswith(" \\") for line in lines[:-1]) and not lines[-1].endswith("\\")
    text = " ".join(lines)
    for expected in (
        "--num-layers 32",
        "--hidden-size 4096",
        "--ffn-hidden-size 14336",
        "--num-attention-heads 32",
        "--group-query-attention",
        "--num-query-groups 8",
        "--swiglu",
        "--sequence-parallel",
        "--use-distributed-optimizer",
        "--recompute-granularity full",
        "--bf16",
    ):
        assert expected in text


def test_megatron_export_refuses_what_it_cannot_express(llama: ModelDescription) -> None:
    u = Uniform(
        world_size=8, global_batch_size=8, micro_batch_size=1, precision="bf16", tp=2, sp="ulysses"
    )
    with pytest.raises(ValueError) as error:
        megatron.export(u, llama)
    assert "Ulysses" in _one_line(error)


def test_megatron_gpt3_175b_script() -> None:
    text = (FIXTURES / "megatron_train_gpt3_175b_distributed.sh").read_text()
    u = megatron.import_config(text, world_size=1024, source="train_gpt3_175b_distributed.sh")
    assert u == Uniform(
        world_size=1024, global_batch_size=1536, micro_batch_size=1, precision="fp16", tp=8, pp=16
    )
    # The script launches 8 GPUs (GPUS_PER_NODE x NUM_NODES), too few for tp 8 x pp 16.
    with pytest.raises(ValueError) as error:
        megatron.import_config(text, world_size=None, source="train_gpt3_175b_distributed.sh")
    assert "does not divide 8 devices" in _one_line(error)


def test_megatron_llama3_8b_script() -> None:
    text = (FIXTURES / "megatron_train_llama3_8b_h100_fp8.sh").read_text()
    u = megatron.import_config(text, world_size=None, source="train_llama3_8b_h100_fp8.sh")
    # --sequence-parallel is given, but Megatron-LM turns it off at tp 1.
    assert u == Uniform(
        world_size=8, global_batch_size=128, micro_batch_size=1, precision="bf16", dp="zero1"
    )


SCRIPT = """#!/bin/bash
GPUS_PER_NODE=4
NNODES=${NNODES:-2}
MBS=$1
ARGS=(
    --tensor-model-parallel-size 2  # two-way
    --pipeline-model-parallel-size 2
    --num-layers 8 --num-layers-per-virtual-pipeline-stage 2
    --recompute-activations
)
ARGS+=(--global-batch-size 32 --bf16)
torchrun --nproc_per_node $GPUS_PER_NODE --nnodes $NNODES pretrain_gpt.py \\
    "${ARGS[@]}" \\
    --micro-batch-size ${MBS:-2}
"""


def test_megatron_script_reading() -> None:
    u = megatron.import_config(SCRIPT, world_size=None, source="run.sh")
    assert u == Uniform(
        world_size=8,
        global_batch_size=32,
        micro_batch_size=2,
        precision="bf16",
        tp=2,
        pp=2,
        ckpt="attention",
        schedule="interleaved-1f1b",
        chunks=2,
    )
    unresolved = SCRIPT.replace("${MBS:-2}", "$MBS")
    with pytest.raises(ValueError) as error:
        megatron.import_config(unresolved, world_size=None, source="run.sh")
    assert _one_line(error).startswith("run.sh: --micro-batch-size is '$MBS'")
    no_devices = SCRIPT.replace("$GPUS_PER_NODE", "$(nvidia-smi -L | wc -l)")
    with pytest.raises(ValueError) as error:
        megatron.import_config(
            no_devices.replace("GPUS_PER_NODE=4", ""), world_size=None, source="run.sh"
        )
    assert "--world-size" in _one_line(error)
    with pytest.raises(ValueError) as error:
        megatron.import_config("echo hello\n", world_size=8, source="run.sh")
    assert "no Megatron-LM arguments" in _one_line(error)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("--use-torch-fsdp2", {"dp": "zero3"}),
        ("--use-torch-fsdp2 --torch-fsdp2-no-reshard-after-forward", {"dp": "zero2"}),
        ("--use-megatron-fsdp --data-parallel-sharding-strategy optim_grads", {"dp": "zero2"}),
        (
            "--recompute-granularity full --recompute-method block --recompute-num-layers 8",
            {"ckpt": "full"},
        ),
        ("--recompute-granularity selective", {"ckpt": "attention"}),
    ],
)
def test_megatron_reads_other_spellings(flags: str, expected: dict[str, str]) -> None:
    text = f"--num-layers 8 --micro-batch-size 1 {flags}"
    u = megatron.import_config(text, world_size=4, source="args")
    assert {name: getattr(u, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--context-parallel-size 2", "--context-parallel-size 2: plans have no context"),
        ("--virtual-pipeline-model-parallel-size 2", "use --num-virtual-stages-per-pipeline"),
        (
            "--recompute-granularity full --recompute-method block --recompute-num-layers 2",
            "recomputes 2 of the 8 blocks",
        ),
        ("--recompute-granularity selective --recompute-modules mlp", "--recompute-modules mlp"),
        ("--tensor-model-parallel-size 3", "does not divide 4 devices"),
        ("--bf16 --fp16", "--bf16 and --fp16"),
    ],
)
def test_megatron_import_errors(flags: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        megatron.import_config(
            f"--num-layers 8 --micro-batch-size 1 {flags}", world_size=4, source="args"
        )
    assert message in _one_line(error)


# --------------------------------------------------------------------------- TorchTitan

# The keys of the sections the exporter writes, as torchtitan 0.2.2 defines them
# (torchtitan/config/job_config.py in the torchtitan-0.2.2 wheel on PyPI: Job, Model,
# Training, Parallelism, ActivationCheckpoint).
TORCHTITAN_KEYS = {
    "job": {
        "config_file",
        "dump_folder",
        "description",
        "print_config",
        "save_config_file",
        "custom_config_module",
    },
    "model": {
        "name",
        "flavor",
        "hf_assets_path",
        "tokenizer_path",
        "converters",
        "print_after_conversion",
    },
    "training": {
        "dataset",
        "dataset_path",
        "local_batch_size",
        "global_batch_size",
        "seq_len",
        "max_norm",
        "steps",
        "enable_cpu_offload",
        "dtype",
        "mixed_precision_param",
        "mixed_precision_reduce",
        "gc_freq",
        "gc_debug",
        "dataloader",
    },
    "parallelism": {
        "data_parallel_replicate_degree",
        "data_parallel_shard_degree",
        "fsdp_reshard_after_forward",
        "tensor_parallel_degree",
        "disable_loss_parallel",
        "enable_async_tensor_parallel",
        "pipeline_parallel_degree",
        "module_fqns_per_model_part",
        "pipeline_parallel_first_stage_less_layers",
        "pipeline_parallel_last_stage_less_layers",
        "pipeline_parallel_layers_per_stage",
        "pipeline_parallel_schedule",
        "pipeline_parallel_schedule_csv",
        "pipeline_parallel_microbatch_size",
        "pipeline_parallel_expert_parallel_overlap",
        "context_parallel_degree",
        "context_parallel_load_balancer",
        "context_parallel_rotate_method",
        "expert_parallel_degree",
        "expert_tensor_parallel_degree",
        "expert_parallel_comm_backend",
    },
    "activation_checkpoint": {
        "mode",
        "selective_ac_option",
        "per_op_sac_force_recompute_mm_shapes_by_fqns",
        "early_stop",
        "memory_budget",
        "visualize_memory_budget_pareto",
        "preserve_rng_state",
        "determinism_check",
        "debug",
    },
}


def test_torchtitan_round_trip_over_a_grid(llama: ModelDescription) -> None:
    seen = 0
    for u in _grid(16):
        if torchtitan.unsupported(u):
            continue
        text = torchtitan.export(u, llama)
        config = tomllib.loads(text)
        for section, table in config.items():
            assert set(table) <= TORCHTITAN_KEYS[section], (section, set(table))
        # Every degree is written, so the file states its device count.
        assert torchtitan.import_config(text, world_size=None, source="job.toml") == u
        seen += 1
    assert seen > 100


def test_torchtitan_export_names_the_flavor_and_the_stages() -> None:
    model = _model("llama3-8b")
    u = Uniform(
        world_size=64,
        global_batch_size=256,
        micro_batch_size=1,
        precision="bf16",
        tp=8,
        pp=4,
        sp="megatron",
        dp="zero3",
        ckpt="selective-op",
        schedule="interleaved-1f1b",
        chunks=2,
        vocab_sp=True,
    )
    config = tomllib.loads(torchtitan.export(u, model))
    assert config["model"] == {"name": "llama3", "flavor": "8B"}
    parallelism = config["parallelism"]
    assert parallelism["pipeline_parallel_schedule"] == "Interleaved1F1B"
    assert parallelism["fsdp_reshard_after_forward"] == "always"
    parts = parallelism["module_fqns_per_model_part"]
    assert len(parts) == 8 and parts[0][:2] == ["tok_embeddings", "layers.0"]
    assert parts[-1][-2:] == ["norm", "output"]
    assert config["training"]["local_batch_size"] == 128  # 256 over 2 data-parallel ranks
    assert config["activation_checkpoint"] == {"mode": "selective", "selective_ac_option": "op"}
    other = torchtitan.export(
        dataclasses.replace(u, pp=1, schedule="1f1b", chunks=1), _model("llama2-7b")
    )
    assert "No TorchTitan llama3 flavor has llama2-7b's sizes" in other


def test_torchtitan_llama3_8b_config() -> None:
    text = (FIXTURES / "torchtitan_llama3_8b.toml").read_text()
    u = torchtitan.import_config(text, world_size=64, source="llama3_8b.toml")
    # FSDP over the 64 GPUs the file is written for, op-level selective checkpointing.
    assert u == Uniform(
        world_size=64,
        global_batch_size=64,
        micro_batch_size=1,
        precision="bf16",
        dp="zero3",
        ckpt="selective-op",
    )
    with pytest.raises(ValueError) as error:
        torchtitan.import_config(text, world_size=None, source="llama3_8b.toml")
    assert "data_parallel_shard_degree = -1" in _one_line(error)
    assert "--world-size" in _one_line(error)


def test_torchtitan_reads_precision_as_torchtitan_applies_it() -> None:
    text = (
        "[training]\nlocal_batch_size = 4\n"
        "[parallelism]\ntensor_parallel_degree = 2\ndata_parallel_shard_degree = 1\n"
        "[activation_checkpoint]\nmode = 'full'\n"
    )
    # Tensor parallelism without FSDP: TorchTitan disables mixed precision.
    u = torchtitan.import_config(text, world_size=None, source="tp.toml")
    assert (u.world_size, u.tp, u.sp, u.vocab_sp, u.precision, u.ckpt) == (
        2,
        2,
        "megatron",
        True,
        "fp32",
        "full",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[parallelism]\ndata_parallel_replicate_degree = 2\ndata_parallel_shard_degree = 4",
            "hybrid sharding",
        ),
        (
            "[parallelism]\ncontext_parallel_degree = 2\ndata_parallel_shard_degree = 4",
            "context_parallel_degree > 1",
        ),
        (
            "[parallelism]\npipeline_parallel_degree = 2\npipeline_parallel_schedule = 'DualPipeV'"
            "\ndata_parallel_shard_degree = 4",
            "'DualPipeV' is not in plans",
        ),
        (
            "[parallelism]\ndata_parallel_shard_degree = 4\n[activation_checkpoint]\n"
            "mode = 'selective'",
            "selective_ac_option '2'",
        ),
        (
            "[parallelism]\ndata_parallel_shard_degree = 4\n[activation_checkpoint]\n"
            "mode = 'memory_budget'",
            "mode 'memory_budget'",
        ),
        (
            "[parallelism]\ndata_parallel_shard_degree = 4\n[training]\nlocal_batch_size = 2\n"
            "global_batch_size = 12",
            "global_batch_size 12",
        ),
        ("[parallelism\n", "not TOML"),
    ],
)
def test_torchtitan_import_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        torchtitan.import_config(text + "\n", world_size=None, source="job.toml")
    assert message in _one_line(error)
    assert _one_line(error).startswith("job.toml: ")


# --------------------------------------------------------------------------- DeepSpeed

# Keys as DeepSpeed 0.19.8 defines them (deepspeed/runtime/constants.py, zero/config.py
# DeepSpeedZeroConfig.stage, activation_checkpointing/config.py,
# tensor_parallel/config.py TPTrainingConfig).
DEEPSPEED_KEYS = {
    "train_batch_size": None,
    "train_micro_batch_size_per_gpu": None,
    "gradient_accumulation_steps": None,
    "bf16": {"enabled"},
    "fp16": {"enabled"},
    "zero_optimization": {"stage"},
    "tensor_parallel": {"autotp_size"},
    "activation_checkpointing": {
        "partition_activations",
        "number_checkpoints",
        "contiguous_memory_optimization",
        "synchronize_checkpoint_boundary",
        "profile",
        "cpu_checkpointing",
    },
}


def test_deepspeed_json_over_a_grid(llama: ModelDescription) -> None:
    seen = 0
    for u in _grid(16):
        if deepspeed.unsupported(u):
            with pytest.raises(ValueError) as error:
                deepspeed.export(u, llama)
            assert "DeepSpeed cannot express" in _one_line(error)
            continue
        config = json.loads(deepspeed.export(u, llama))
        for key, value in config.items():
            assert key in DEEPSPEED_KEYS, key
            if isinstance(value, dict):
                assert set(value) <= DEEPSPEED_KEYS[key]  # type: ignore[operator]
        assert config["train_batch_size"] == (
            config["train_micro_batch_size_per_gpu"]
            * config["gradient_accumulation_steps"]
            * u.data_parallel
        )
        assert config["zero_optimization"]["stage"] == DP_MODES.index(u.dp)
        assert config.get("tensor_parallel", {"autotp_size": 1})["autotp_size"] == u.tp
        seen += 1
    assert seen > 50


def test_deepspeed_matches_its_zero3_example() -> None:
    """The parallel keys DeepSpeed's own ZeRO-3 example sets, for the same setting."""
    shipped = json.loads((FIXTURES / "deepspeed_ds_config_zero3_nosdma.json").read_text())
    u = Uniform(world_size=8, global_batch_size=8, micro_batch_size=1, precision="bf16", dp="zero3")
    ours = deepspeed.config(u)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16"):
        assert ours[key] == shipped[key]
    assert ours["zero_optimization"]["stage"] == shipped["zero_optimization"]["stage"]
