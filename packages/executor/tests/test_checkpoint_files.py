"""Checkpoint folders on one gloo rank: atomic saves, the latest complete one, pruning, and
one-line errors for what does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from partita.executor.checkpoint import (
    checkpoint_folder,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from partita.executor.sharded_state import TrainState, canonical_names
from partita.formats import (
    CheckpointManifest,
    FormatError,
    LayerStrategy,
    PipelineConfig,
    Plan,
    StepRecord,
    TrainingSettings,
)
from partita.models.api import build_model, synthetic_batch

PLAN = Plan(
    world_size=1,
    mesh_axis_order=("pp", "dp", "tp"),
    global_batch_size=2,
    num_micro_batches=1,
    pipeline=PipelineConfig(degree=1, schedule="gpipe", stage_num_layers=(4,)),
    layers=tuple(LayerStrategy() for _ in range(4)),
)


@pytest.fixture(scope="module", autouse=True)
def one_rank() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _trained(model_name: str = "gpt-tiny", seed: int = 0) -> TrainState:
    model = build_model(model_name, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = synthetic_batch(model.config, batch_size=2, seed=seed)
    model.loss(model(batch), batch).backward()
    optimizer.step()
    return TrainState(model, {}, canonical_names(model), [optimizer])


def _manifest(step: int, model: str = "gpt-tiny") -> CheckpointManifest:
    return CheckpointManifest(
        step=step,
        model=model,
        plan_sha256="0" * 64,
        world_size=1,
        settings=TrainingSettings(steps=10, lr=1e-3),
        data_position=step,
        steps=tuple(StepRecord(step=i, loss=1.0, time_s=0.1, items=4) for i in range(step)),
        files=(),  # recorded by save_checkpoint
        rng_ranks=1,
    )


def _save(run: Path, step: int, state: TrainState, keep: int = 2) -> Path:
    return save_checkpoint(state, run_dir=run, manifest=_manifest(step), plan=PLAN, keep=keep)


def test_a_checkpoint_reads_back_exactly_with_the_random_generator(tmp_path: Path) -> None:
    saved = _trained(seed=0)
    torch.manual_seed(7)
    folder = _save(tmp_path, 1, saved)
    expected_draw = torch.rand(3)
    restored = _trained(seed=1)  # other parameters and moments until the checkpoint is read
    torch.manual_seed(99)
    manifest = load_checkpoint(folder, restored)
    assert manifest.step == 1 and manifest.data_position == 1
    assert torch.equal(torch.rand(3), expected_draw)
    for (name, a), (_, b) in zip(
        saved.module.named_parameters(), restored.module.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    (a_opt,), (b_opt,) = saved.optimizers, restored.optimizers
    for a, b in zip(a_opt.param_groups[0]["params"], b_opt.param_groups[0]["params"], strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a_opt.state[a][key], b_opt.state[b][key]), key


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    state = _trained()
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, state, keep=2)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(tmp_path) == checkpoint_folder(tmp_path, 4)


def test_newer_damaged_checkpoints_do_not_prune_the_one_just_written(tmp_path: Path) -> None:
    # A resume fell back past steps 4 and 6 (damaged) to step 2 and saved after step 3.
    state = _trained()
    for step in (2, 4, 6):
        _save(tmp_path, step, state, keep=3)
    for step in (4, 6):
        data = checkpoint_folder(tmp_path, step) / "__0_0.distcp"
        data.write_bytes(data.read_bytes()[:100])
    _save(tmp_path, 3, state, keep=2)
    kept = [p.name for p in complete_checkpoints(tmp_path)]
    assert kept == ["step-00000002", "step-00000003", "step-00000004", "step-00000006"]


CRASHING_SAVE = """
import os, sys, torch, torch.distributed as dist
from torch.distributed.checkpoint import FileSystemWriter
sys.path.insert(0, {tests!r})
import test_checkpoint_files as t
from partita.executor.checkpoint import save_checkpoint

class CrashBeforeMetadata(FileSystemWriter):
    def finish(self, metadata, results):  # every data file written, the metadata not yet
        os._exit(9)

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
state = t._trained()
save_checkpoint(state, run_dir={run!r}, manifest=t._manifest(1), plan=t.PLAN)
save_checkpoint(state, run_dir={run!r}, manifest=t._manifest(2), plan=t.PLAN,
                make_writer=CrashBeforeMetadata)
"""


def test_a_crash_in_the_middle_of_a_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    script = CRASHING_SAVE.format(tests=str(Path(__file__).parent), run=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 9, done.stderr[-2000:]
    partial = tmp_path / "checkpoints" / ".step-00000002.partial"
    assert any(partial.glob("*.distcp")), "the crash came after the data was written"
    assert latest_checkpoint(tmp_path) == checkpoint_folder(tmp_path, 1)
    assert load_checkpoint(latest_checkpoint(tmp_path), _trained()).step == 1
    # The next save at that step starts over and completes.
    _save(tmp_path, 2, _trained())
    assert latest_checkpoint(tmp_path) == checkpoint_folder(tmp_path, 2)
    assert not partial.exists()


def test_a_folder_without_a_manifest_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a checkpoint \(no manifest.json\)"):
        load_checkpoint(tmp_path, _trained())


def test_a_checkpoint_of_another_model_is_refused_naming_the_parameter(tmp_path: Path) -> None:
    folder = _save(tmp_path, 1, _trained("gpt-tiny"))
    with pytest.raises(ValueError) as error:
        load_checkpoint(folder, _trained("llama-tiny"))
    message = str(error.value)
    assert message.startswith(f"{folder}: the checkpoint of 'gpt-tiny' has no parameter ")
    assert "\n" not in message


def test_a_manifest_from_a_newer_partita_is_refused_by_version(tmp_path: Path) -> None:
    folder = _save(tmp_path, 1, _trained())
    document = json.loads((folder / "manifest.json").read_text())
    document["version"] = 99
    (folder / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(FormatError, match="version 99 is newer than the supported version 3"):
        load_checkpoint(folder, _trained())
