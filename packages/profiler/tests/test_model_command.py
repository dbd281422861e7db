"""``partita profile model`` run for real on tiny models (CPU, in this process, ~1 s each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from partita.executor.setups import SEQUENCE_PARALLEL_MODES
from partita.formats import LayerMemory, ModelProfile, load
from partita.formats.cli import main
from partita.models.api import build_model, describe_model
from partita.profiler.model_cases import layer_cases

SEQ = 32
BATCHES = (1, 2)
FP32 = 4


def _profile(path: Path, *extra: str, model: str = "gpt-tiny") -> list[str]:
    return [
        "profile",
        "model",
        "--model",
        model,
        "--seq",
        str(SEQ),
        "--batch-sizes",
        *map(str, BATCHES),
        "--tp",
        "1",
        "2",
        "--out",
        str(path),
        *extra,
    ]


@pytest.fixture(scope="module")
def gpt_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelProfile, ModelProfile]:
    """Two runs of the same command, for the checks and for reproducibility."""
    profiles = []
    for run in range(2):
        out = tmp_path_factory.mktemp(f"gpt{run}") / "model.json"
        assert main(_profile(out, "--repeats", "15", "--quiet")) == 0
        assert not out.with_name("model.json.partial").exists()
        profiles.append(load(out, ModelProfile))
    return profiles[0], profiles[1]


def test_every_layer_type_has_timings_for_each_configuration_and_micro_batch(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    profile = gpt_runs[0]
    description = describe_model("gpt-tiny", seq_len=SEQ)
    cases = layer_cases(description, tp_degrees=(1, 2), sp_modes=("megatron", "ulysses"))
    assert [lt.layer_type for lt in profile.layer_types] == [c.layer_type for c in cases]
    assert (profile.model, profile.dtype, profile.origin) == ("gpt-tiny", "fp32", "measured")
    for case in cases:
        entry = profile.layer_type(case.layer_type)
        assert entry is not None
        timed = {(t.tp, t.sp, t.micro_batch, t.seq_len) for t in entry.timings}
        wanted = {(c.tp, c.sp, b, SEQ) for c in case.configs for b in BATCHES}
        assert timed == wanted
        assert {(m.tp, m.sp, m.seq_len) for m in entry.memory} == {
            (c.tp, c.sp, SEQ) for c in case.configs
        }
        for timing in entry.timings:
            assert timing.forward_s > 0 and timing.backward_s > 0
            assert timing.origin == (
                "measured_tp_groups" if timing.tp == 1 else "measured_tp1_plus_comm"
            )
    block = profile.layer_type("gpt_block")
    assert block is not None
    assert {(t.tp, t.sp) for t in block.timings} == {
        (1, "none"),
        (2, "none"),
        (2, "megatron"),
        (2, "ulysses"),
    }


def test_parameter_bytes_are_the_layers_real_parameters(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    profile = gpt_runs[0]
    description = describe_model("gpt-tiny", seq_len=SEQ)
    model = build_model("gpt-tiny", seed=0)
    tied_copies = {name for tied in model.tied for name in tied.names[1:]}
    for name in ("embedding", "blocks.0", "head"):
        index = model.layer_index(name)
        real = sum(
            p.numel()
            for n, p in model.layers[index].named_parameters(prefix=f"layers.{index}")
            if n not in tied_copies
        )
        layer_type = model.layer_types[index]
        entry = profile.layer_type(layer_type)
        assert entry is not None
        memory = next(m for m in entry.memory if m.tp == 1)
        assert memory.param_bytes == real * FP32 == description.layers[index].params * FP32
        assert memory.grad_bytes == memory.param_bytes
        assert memory.optimizer_bytes == 2 * memory.param_bytes  # AdamW: two fp32 moments


def test_tensor_parallel_shard_holds_about_half_the_block(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    block = gpt_runs[0].layer_type("gpt_block")
    assert block is not None
    by_config = {(m.tp, m.sp): m for m in block.memory}
    h = 64
    whole = describe_model("gpt-tiny", seq_len=SEQ).blocks[0].params
    replicated = 6 * h  # two layer norms (weight, bias) and the row-parallel biases
    shard = (whole - replicated) // 2 + replicated
    assert by_config[(1, "none")].param_bytes == whole * FP32
    assert by_config[(2, "none")].param_bytes == shard * FP32
    assert by_config[(2, "megatron")].param_bytes == shard * FP32
    assert by_config[(2, "ulysses")].param_bytes == whole * FP32  # Ulysses splits no weight
    assert 0.5 < shard / whole < 0.52


def test_activations_are_positive_and_checkpointing_keeps_less(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    profile = gpt_runs[0]
    for layer_type in profile.layer_types:
        # The head is measured with its loss: checkpointed, it would keep a scalar.
        least = 0 if layer_type.layer_type == "gpt_head" else 1
        for memory in layer_type.memory:
            assert memory.activation_bytes_per_sample > 0
            assert (
                least
                <= memory.checkpoint_activation_bytes_per_sample
                <= (memory.activation_bytes_per_sample)
            )
            assert memory.origin == "fitted"  # slope over micro-batches 1 and 2
    block = profile.layer_type("gpt_block")
    assert block is not None
    for memory in block.memory:
        assert memory.checkpoint_activation_bytes_per_sample < memory.activation_bytes_per_sample
    whole = next(m for m in block.memory if m.tp == 1)
    # Checkpointed, a block keeps its output: seq x hidden fp32 values per sample.
    assert whole.checkpoint_activation_bytes_per_sample == SEQ * 64 * FP32
    # The description's estimate of what a block saves is within 5% of the measurement.
    estimate = describe_model("gpt-tiny", seq_len=SEQ).blocks[0].activation_bytes_per_sample
    assert whole.activation_bytes_per_sample == pytest.approx(estimate, rel=0.05)


def test_blocks_record_the_attention_core_and_the_weight_gradients(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    # What selective recompute and a split backward cost, per block: the attention core's
    # forward (part of the forward), the weights' gradients (part of the backward), and what
    # checkpointing the core frees: SDPA's softmax statistics, one fp32 value per query and
    # head (4 heads of 16 dims in gpt-tiny, split by tp), and under Ulysses also the core's
    # output, which the exchange back to sequence shards does not keep.
    profile = gpt_runs[0]
    block = profile.layer_type("gpt_block")
    assert block is not None
    shares = []
    for timing in block.timings:
        assert timing.attention_forward_s is not None and timing.weight_backward_s is not None
        assert 0 < timing.attention_forward_s < timing.forward_s
        assert 0 <= timing.weight_backward_s <= timing.backward_s
        shares.append(timing.weight_backward_s / timing.backward_s)
    # Sub-millisecond CPU passes scatter; the weights' share, over the configurations, does
    # not vanish and is not all of it (about half the FLOPs).
    assert 0.05 < sum(shares) / len(shares) < 0.95
    for memory in block.memory:
        heads = 4 // memory.tp
        output = heads * SEQ * 16 * FP32 if memory.sp == "ulysses" else 0
        saved = heads * SEQ * FP32 + output
        assert memory.attention_saved_bytes_per_sample == pytest.approx(saved)
    for name in ("gpt_embedding", "gpt_head"):  # nothing to split there
        other = profile.layer_type(name)
        assert other is not None
        assert all(t.attention_forward_s is None for t in other.timings)
        assert all(t.attention_checkpoint_backward_s is None for t in other.timings)
        assert all(m.attention_saved_bytes_per_sample is None for m in other.memory)
    for timing in block.timings:  # timed as run: the core's forward again, and more
        assert timing.attention_checkpoint_forward_s is not None
        assert timing.attention_checkpoint_backward_s is not None
        assert timing.attention_checkpoint_forward_s > 0
        assert timing.attention_checkpoint_backward_s > timing.attention_forward_s


def _check_selective_op(block_memory: LayerMemory) -> None:
    """What ``ckpt: selective-op`` keeps lies between full checkpointing and none."""
    kept = block_memory.selective_saved_bytes_per_sample
    assert kept is not None
    assert block_memory.checkpoint_activation_bytes_per_sample < kept
    assert kept < block_memory.activation_bytes_per_sample


def test_blocks_record_what_selective_op_keeps_and_runs_again(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    # gpt-tiny's block runs six matmuls (q, k, v, out, fc, proj) and SDPA: the policy keeps
    # q, v, fc (the 1st, 3rd, 5th) and the kernel's output and softmax statistics, each
    # split by tp (under Ulysses the projections' sequence and the kernel's heads are split,
    # the same bytes); the rest is recomputed. Checkpointed, the block keeps its output too.
    profile = gpt_runs[0]
    block = profile.layer_type("gpt_block")
    assert block is not None
    for memory in block.memory:
        _check_selective_op(memory)
        matmuls = SEQ * (64 + 64 + 256) * FP32
        kernel = SEQ * 64 * FP32 + 4 * SEQ * FP32
        assert memory.selective_saved_bytes_per_sample == pytest.approx(
            memory.checkpoint_activation_bytes_per_sample + (matmuls + kernel) / memory.tp
        )
    for timing in block.timings:
        assert timing.selective_recompute_s is not None and timing.selective_recompute_s > 0
        assert timing.selective_forward_s is not None and timing.selective_forward_s > 0
    for name in ("gpt_embedding", "gpt_head"):  # not checkpointed by the executor
        other = profile.layer_type(name)
        assert other is not None
        assert all(t.selective_recompute_s is None for t in other.timings)
        assert all(t.selective_forward_s is None for t in other.timings)
        assert all(m.selective_saved_bytes_per_sample is None for m in other.memory)


VOCAB = 512


def test_the_head_is_measured_with_its_loss_and_backward_working_memory(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    head = gpt_runs[0].layer_type("gpt_head")
    block = gpt_runs[0].layer_type("gpt_block")
    assert head is not None and block is not None
    whole = next(m for m in head.memory if m.tp == 1)
    logits = SEQ * VOCAB * FP32  # per sample
    # The loss saves its log-softmax over the vocabulary; its backward needs at least the
    # gradient of the logits on top (measured: 1.87 x the logits, gradients of the
    # log-softmax and of the logits overlapping).
    assert whole.activation_bytes_per_sample >= logits
    assert 1.5 * logits <= whole.backward_peak_bytes_per_sample <= 3 * logits
    assert next(m for m in block.memory if m.tp == 1).backward_peak_bytes_per_sample > 0
    # Every configuration steps the same tensors (shards of them); the head's weight is the
    # embedding's, so the head's own are its layer norm's weight and bias.
    model = build_model("gpt-tiny")
    assert {m.param_tensors for m in block.memory} == {len(list(model.layers[1].parameters()))}
    assert {m.param_tensors for m in head.memory} == {2}


def test_two_runs_agree_within_their_spread(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    """Memory is counted exactly, so it repeats to the byte. Times on this shared CPU do not:
    an entry agrees when the runs differ by at most twice the larger recorded spread (IQR over
    median) plus a 30% margin of the larger time; three quarters of the entries must."""
    first, second = gpt_runs
    agreeing, total = 0, 0
    for a_type, b_type in zip(first.layer_types, second.layer_types, strict=True):
        assert a_type.memory == b_type.memory
        for a, b in zip(a_type.timings, b_type.timings, strict=True):
            assert (a.tp, a.sp, a.micro_batch) == (b.tp, b.sp, b.micro_batch)
            for x, y in ((a.forward_s, b.forward_s), (a.backward_s, b.backward_s)):
                allowed = (2 * max(a.spread, b.spread) + 0.3) * max(x, y)
                agreeing += abs(x - y) <= allowed
                total += 1
    assert agreeing >= 0.75 * total, f"{agreeing}/{total} times agree"


def test_summary_table_and_progress_are_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.json"
    argv = _profile(out, "--repeats", "1", "--warmup", "0")
    argv[argv.index("--batch-sizes") + 1 : argv.index("--tp")] = ["1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "gpt_block" in captured.out and "act/sample" in captured.out
    assert (
        "[1/8] gpt_embedding tp 1 none mb 1: fwd" in captured.err and f"wrote {out}" in captured.err
    )


def test_unknown_model_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.json"
    assert main(_profile(out, model="gpt-nonexistent")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'gpt-nonexistent'" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_batch_over_the_memory_limit_is_one_line_and_keeps_what_was_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The embedding (about 0.7 MB with its optimizer states) fits; a block (about 1 MB) not.
    out = tmp_path / "model.json"
    assert main(_profile(out, "--memory-limit", "900k", "--repeats", "2")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("partita profile: error: gpt_block tp 1 none micro-batch 1")
    assert "--memory-limit 900000 bytes" in lines[-1]
    partial = out.with_name("model.json.partial")
    assert f"kept in {partial}" in lines[-1]
    assert not out.exists()
    kept = load(partial, ModelProfile)
    assert [lt.layer_type for lt in kept.layer_types] == ["gpt_embedding"]
    assert len(kept.layer_types[0].timings) == 2 * len(BATCHES)


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("--batch-sizes", "0", "--batch-sizes: must be >= 1"),
        ("--memory-limit", "lots", "--memory-limit: expected bytes"),
        ("--seq", "0", "--seq: must be >= 1"),
        ("--device", "bogus", "--device: expected cpu or cuda, got 'bogus'"),
    ],
)
def test_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argument: str, value: str, message: str
) -> None:
    argv = _profile(tmp_path / "model.json")
    if argument in argv:
        position = argv.index(argument) + 1
        argv[position] = value
        if argument == "--batch-sizes":
            del argv[position + 1]
    else:
        argv += [argument, value]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_the_profile_records_the_attention_kernel_auto_is_sdpa_on_cpu(
    gpt_runs: tuple[ModelProfile, ModelProfile],
) -> None:
    assert gpt_runs[0].attention == "sdpa"


@pytest.mark.parametrize(("choice", "sdpa_runs"), [("sdpa", True), ("eager", False)])
def test_the_layers_are_measured_with_the_attention_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: str, sdpa_runs: bool
) -> None:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return sdpa(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    out = tmp_path / "model.json"
    argv = _profile(out, "--repeats", "1", "--warmup", "0", "--quiet", "--attention", choice)
    argv[argv.index("--batch-sizes") + 1 : argv.index("--tp")] = ["1"]
    argv[argv.index("--tp") + 1 : argv.index("--out")] = ["1"]
    assert main(argv) == 0
    assert load(out, ModelProfile).attention == choice
    assert bool(calls) == sdpa_runs


def test_an_unknown_attention_kernel_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit:  # argparse's choices
        main(_profile(tmp_path / "model.json", "--attention", "xformers"))
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "argument --attention: invalid choice: 'xformers'" in lines[0]


@pytest.mark.parametrize("nproc", ["1", "2"])
def test_flash_attention_on_cpu_is_one_line_before_anything_is_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, nproc: str
) -> None:
    def measured(*_: object) -> None:
        raise AssertionError("measured despite an attention kernel the device cannot run")

    monkeypatch.setattr("partita.profiler.model_run.profile_model", measured)
    argv = _profile(tmp_path / "model.json", "--device", "cpu", "--attention", "flash")
    assert main([*argv, "--nproc", nproc]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "partita profile: error: --attention flash: flash-attn needs a CUDA device, got cpu"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_second_family_llama(tmp_path: Path) -> None:
    out = tmp_path / "llama.json"
    argv = _profile(out, "--repeats", "2", "--quiet", model="llama-tiny")
    argv[argv.index("--batch-sizes") + 1 : argv.index("--tp")] = ["1"]
    assert main(argv) == 0
    profile = load(out, ModelProfile)
    description = describe_model("llama-tiny", seq_len=SEQ)
    assert {lt.layer_type for lt in profile.layer_types} == {
        layer.layer_type for layer in description.layers
    }
    for layer in description.layers:
        entry = profile.layer_type(layer.layer_type)
        assert entry is not None
        whole = next(m for m in entry.memory if m.tp == 1)
        assert whole.param_bytes == layer.params * FP32
        assert whole.origin == "measured_tp_groups"  # one micro-batch size: nothing fitted
        if layer.kind == "block":
            for memory in entry.memory:
                _check_selective_op(memory)
            assert all((t.selective_recompute_s or 0) > 0 for t in entry.timings)
    document = json.loads(out.read_text())
    assert document["tools"]["memory"].startswith("cpu-profiler-allocation-events")


def test_world2_gloo_real_tensor_parallel_groups(tmp_path: Path) -> None:
    """--nproc 2: two torchrun ranks on gloo; timings include the collectives."""
    out = tmp_path / "ranks.json"
    argv = _profile(out, "--nproc", "2", "--repeats", "2", "--warmup", "1", "--quiet")
    argv[argv.index("--batch-sizes") + 1 : argv.index("--tp")] = ["1"]
    assert main(argv) == 0
    profile = load(out, ModelProfile)
    block = profile.layer_type("gpt_block")
    assert block is not None
    assert {(t.tp, t.sp) for t in block.timings} == {
        (1, "none"),
        (2, "none"),
        (2, "megatron"),
        (2, "ulysses"),
    }
    assert all(t.origin == "measured_tp_groups" for lt in profile.layer_types for t in lt.timings)
    assert "2 torchrun ranks" in profile.tools["timing"]
    # Memory comes from the one-process shards (CPU). With one micro-batch size nothing is
    # fitted: a checkpointed block keeps its output and the CPU RNG state checkpoint saves.
    whole = next(m for m in block.memory if (m.tp, m.sp) == (1, "none"))
    rng_state = torch.get_rng_state().numel()
    assert whole.checkpoint_activation_bytes_per_sample == SEQ * 64 * FP32 + rng_state


def test_a_degree_above_nproc_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _profile(tmp_path / "model.json", "--nproc", "2")
    argv[argv.index("--tp") + 2] = "4"
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--tp 4 needs 4 ranks; --nproc is 2" in lines[0]


def _quick(tmp_path: Path, model: str, *extra: str) -> ModelProfile:
    out = tmp_path / f"{model}.json"
    argv = _profile(out, "--repeats", "1", "--warmup", "0", "--quiet", *extra, model=model)
    if model.startswith("swin"):  # the image fixes the sequence (256 patches)
        del argv[argv.index("--seq") : argv.index("--seq") + 2]
    assert main(argv) == 0
    return load(out, ModelProfile)


def _check_sequence_parallel_entries(profile: ModelProfile, model: str, seq: int | None) -> None:
    """Blocks: tp 1, tp 2 none and the family's modes (the executor's, read now); parameter
    bytes exact at tp 1; sequence-parallel activations per sample below tp 1's."""
    description = describe_model(model, seq_len=seq)
    modes = SEQUENCE_PARALLEL_MODES[profile.model.split("-")[0]]
    model_layers = build_model(model, seed=0)
    tied_copies = {name for tied in model_layers.tied for name in tied.names[1:]}
    for index, layer in enumerate(description.layers):
        entry = profile.layer_type(layer.layer_type)
        assert entry is not None
        memory = {(m.tp, m.sp): m for m in entry.memory if m.seq_len == layer.seq_len}
        real = sum(
            p.numel()
            for n, p in model_layers.layers[index].named_parameters(prefix=f"layers.{index}")
            if n not in tied_copies
        )
        assert memory[(1, "none")].param_bytes == real * FP32 == layer.params * FP32
        if layer.kind != "block" or layer.vocab_parallel:
            assert set(memory) == {(1, "none"), (2, "none")}
            continue
        assert set(memory) == {(1, "none"), (2, "none"), *((2, sp) for sp in modes)}
        whole = memory[(1, "none")].activation_bytes_per_sample
        for sp in modes:
            assert 0 < memory[(2, sp)].activation_bytes_per_sample < whole
        assert {(t.tp, t.sp) for t in entry.timings if t.seq_len == layer.seq_len} == set(memory)


def test_t5_blocks_under_sequence_parallelism_and_its_bridge_at_sp_none(tmp_path: Path) -> None:
    profile = _quick(tmp_path, "t5-tiny")
    _check_sequence_parallel_entries(profile, "t5-tiny", SEQ)
    block = profile.layer_type("t5_decoder_block")
    assert block is not None
    assert {m.sp for m in block.memory} == {"none", "megatron", "ulysses"}
    bridge = profile.layer_type("t5_decoder_embedding")
    assert bridge is not None and {m.sp for m in bridge.memory} == {"none"}
    # Megatron splits the weights as tp 2 sp none does; Ulysses keeps them whole.
    by_config = {(m.tp, m.sp): m.param_bytes for m in block.memory}
    assert by_config[(2, "megatron")] == by_config[(2, "none")] < by_config[(1, "none")]
    assert by_config[(2, "ulysses")] == by_config[(1, "none")]


def test_swin_blocks_and_patch_merging_under_sequence_parallelism(
    tmp_path: Path,
) -> None:
    profile = _quick(tmp_path, "swin-tiny")
    _check_sequence_parallel_entries(profile, "swin-tiny", None)
    merging = profile.layer_type("swin_patch_merging")
    assert merging is not None
    # A band of rows merges on its own: half the map, half the bytes.
    by_config = {(m.tp, m.sp, m.seq_len): m for m in merging.memory}
    for seq in (256, 64):
        whole, band = by_config[(1, "none", seq)], by_config[(2, "megatron", seq)]
        assert band.activation_bytes_per_sample == pytest.approx(
            whole.activation_bytes_per_sample / 2, rel=0.05
        )
    assert "refused" not in profile.tools


def test_a_configuration_the_executor_refuses_is_left_out_and_named(tmp_path: Path) -> None:
    """Swin-tiny's stage-1 map has 8 rows: 8 ranks would get one row each, which patch merging
    refuses; the stage-2 blocks after it are measured as if a plan kept it whole."""
    out = tmp_path / "swin.json"
    argv = _profile(out, "--repeats", "1", "--warmup", "0", "--quiet", model="swin-tiny")
    del argv[argv.index("--seq") : argv.index("--seq") + 2]
    argv[argv.index("--batch-sizes") + 1 : argv.index("--tp")] = ["1"]
    argv[argv.index("--tp") + 1 : argv.index("--out")] = ["8"]
    assert main(argv) == 0
    profile = load(out, ModelProfile)
    merging = profile.layer_type("swin_patch_merging")
    assert merging is not None
    assert (8, "megatron", 64) not in {(m.tp, m.sp, m.seq_len) for m in merging.memory}
    assert (8, "megatron", 256) in {(m.tp, m.sp, m.seq_len) for m in merging.memory}
    assert "swin_patch_merging tp 8 megatron" in profile.tools["refused"]
    stage2 = profile.layer_type("swin_block_stage2")
    assert stage2 is not None and (8, "megatron") in {(m.tp, m.sp) for m in stage2.memory}


@pytest.mark.parametrize(
    ("world", "tp", "cores", "measuring"),
    [
        (4, 1, None, 4),  # a GPU per rank: every group measures at once
        (4, 2, None, 4),
        (3, 2, None, 2),  # the rank left over waits
        (4, 1, 2, 2),  # 4 ranks on 2 cores: as many as the cores hold
        (4, 2, 2, 2),
        (4, 4, 2, 4),  # rank 0's group measures even where it oversubscribes
        (8, 2, 5, 4),  # whole groups only
        (2, 1, 2, 2),  # not oversubscribed: all
    ],
)
def test_on_a_shared_cpu_host_only_the_groups_the_cores_hold_measure_at_once(
    world: int, tp: int, cores: int | None, measuring: int
) -> None:
    from partita.profiler.model_measure import measuring_ranks

    assert measuring_ranks(world=world, tp=tp, cores=cores) == measuring
