"""Damaged checkpoints: found against the manifest, skipped for the newest intact one saying
why (resume and export), one line naming the file when none is intact; and whether a
checkpoint fits a model, checked before any rank starts.

The run folder with two real checkpoints (after steps 1 and 2, gpt-tiny on one gloo rank) is
written once; every other test runs with no process group, as the launcher and export do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch.distributed as dist
from test_checkpoint_files import PLAN, _manifest, _trained

from partita.executor.checkpoint import (
    checkpoint_folder,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    verify_checkpoint,
)
from partita.executor.checkpoint_checks import (
    check_checkpoint_fits,
    intact_checkpoint,
    resume_checkpoint,
)
from partita.executor.sharded_state import TrainState, canonical_names
from partita.formats.cli import main
from partita.models.api import build_model, resolve_config

OLD = "step-00000001"
UNTIED = {**resolve_config("gpt-tiny").to_dict(), "tie_word_embeddings": False}


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``gpt``: checkpoints after steps 1 and 2; ``untied``: one of gpt-tiny with its own
    output layer (a parameter more than gpt-tiny)."""
    runs = {name: tmp_path_factory.mktemp(name) for name in ("gpt", "untied")}
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        state = _trained()
        for step in (1, 2):
            save_checkpoint(state, run_dir=runs["gpt"], manifest=_manifest(step), plan=PLAN)
        untied = build_model(UNTIED, seed=0)
        save_checkpoint(
            TrainState(untied, {}, canonical_names(untied), []),
            run_dir=runs["untied"],
            manifest=_manifest(1, model="gpt-tiny-untied"),
            plan=PLAN,
        )
    finally:
        dist.destroy_process_group()
    return runs


@pytest.fixture
def saved_run(saved_runs: dict[str, Path]) -> Path:
    return saved_runs["gpt"]


@pytest.fixture
def run(saved_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved_run, tmp_path / "run"))


def _truncate(path: Path) -> str:
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    return f"truncated: {size // 2} bytes, the manifest records {size}"


def _flip(path: Path) -> str:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):  # inside a tensor's bytes
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return "SHA-256 differs from the manifest's (the file changed after the save)"


def _delete(path: Path) -> str:
    size = path.stat().st_size
    path.unlink()
    if path.name == "manifest.json":
        return "missing (an incomplete checkpoint)"
    return f"missing (the manifest records {size} bytes)"


# A file of the newest checkpoint and what is done to it.
DAMAGES = {
    "truncated-distcp": ("__0_0.distcp", _truncate),
    "flipped-distcp": ("__0_0.distcp", _flip),
    "flipped-metadata": (".metadata", _flip),
    "deleted-distcp": ("__0_0.distcp", _delete),
    "deleted-manifest": ("manifest.json", _delete),
}


def _damage(folder: Path, case: str) -> str:
    """Damage ``folder`` as ``case`` says; the reason a fallback gives for skipping it."""
    name, how = DAMAGES[case]
    return f"checkpoint {folder.name} is damaged ({folder / name}: {how(folder / name)})"


def _export(source: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(["export", str(source), "--out", str(out)])
    lines = capsys.readouterr().err.splitlines()
    return code, [line for line in lines if line.startswith("partita")]  # not transformers'


def test_the_manifest_records_every_file_with_its_size_and_sha256(saved_run: Path) -> None:
    folder = checkpoint_folder(saved_run, 2)
    recorded = {f.name: f for f in read_manifest(folder).files}
    on_disk = sorted(p.name for p in folder.iterdir() if p.name != "manifest.json")
    assert sorted(recorded) == on_disk == [".metadata", "__0_0.distcp", "plan.json"]
    for name, record in recorded.items():
        data = (folder / name).read_bytes()
        assert (record.bytes, record.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert verify_checkpoint(folder).step == 2


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_resume_falls_back_to_the_older_checkpoint_saying_why(run: Path, case: str) -> None:
    reason = _damage(checkpoint_folder(run, 2), case)
    lines: list[str] = []
    assert resume_checkpoint(run, log=lines.append) == checkpoint_folder(run, 1)
    assert lines == [f"partita train: {reason}; resuming from {OLD}"]
    assert intact_checkpoint(run) == (checkpoint_folder(run, 1), [reason])


@pytest.mark.parametrize("case", ["truncated-distcp", "deleted-manifest"])
def test_export_falls_back_and_names_the_step_it_exported(
    run: Path, case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = _damage(checkpoint_folder(run, 2), case)
    out = tmp_path / "hf"
    assert _export(run, out, capsys) == (
        0,
        [
            f"partita export: {reason}; exporting {OLD}",
            f"partita export: wrote {out} from step 1 of {run} "
            f"(checkpoint {checkpoint_folder(run, 1)})",
        ],
    )


def test_export_of_a_checkpoint_with_flipped_bytes_is_one_line_naming_the_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = checkpoint_folder(run, 2)
    _damage(folder, "flipped-distcp")
    code, lines = _export(folder, tmp_path / "hf", capsys)
    assert (code, lines) == (
        2,
        [
            f"partita export: error: {folder / '__0_0.distcp'}: SHA-256 differs from the "
            "manifest's (the file changed after the save)"
        ],
    )
    assert not (tmp_path / "hf").exists()


def test_with_no_intact_checkpoint_one_line_names_each_damaged_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = _damage(checkpoint_folder(run, 2), "flipped-distcp")
    old = _damage(checkpoint_folder(run, 1), "truncated-distcp")
    with pytest.raises(ValueError) as error:
        resume_checkpoint(run, log=pytest.fail)
    root = run / "checkpoints"
    assert str(error.value) == f"{root}: no intact checkpoint to resume from: {new}; {old}"
    assert _export(run, tmp_path / "hf", capsys) == (
        2,
        [f"partita export: error: {root}: no intact checkpoint to export: {new}; {old}"],
    )


def test_a_run_without_checkpoints_resumes_from_nothing(tmp_path: Path) -> None:
    assert resume_checkpoint(tmp_path, log=pytest.fail) is None
    assert intact_checkpoint(tmp_path) == (None, [])


def test_a_checkpoint_of_a_newer_partita_is_refused_not_skipped(run: Path) -> None:
    """Falling back past it would silently drop the steps a newer Partita trained."""
    manifest = checkpoint_folder(run, 2) / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": 99}))
    with pytest.raises(ValueError, match=r"manifest.json: version: version 99 is newer .*upgrade"):
        resume_checkpoint(run, log=pytest.fail)


def _as_version_1(folder: Path) -> None:
    document = json.loads((folder / "manifest.json").read_text())
    del document["files"]
    (folder / "manifest.json").write_text(json.dumps({**document, "version": 1}))


def test_a_version_1_checkpoint_is_trusted_but_a_cut_file_is_still_found(run: Path) -> None:
    folder = checkpoint_folder(run, 2)
    _as_version_1(folder)
    assert read_manifest(folder).files == ()
    assert intact_checkpoint(run) == (folder, [])
    data = folder / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[:1000])  # DCP's metadata says how long it was
    with pytest.raises(ValueError, match=rf"^{data}: truncated: 1000 bytes, the checkpoint "):
        verify_checkpoint(folder)
    assert resume_checkpoint(run, log=lambda line: None) == checkpoint_folder(run, 1)


@pytest.mark.parametrize("zeroed", [False, True], ids=["truncated", "zeroed"])
def test_reading_a_damaged_checkpoint_is_one_line(run: Path, zeroed: bool) -> None:
    # Nothing verified it first (a version 1 manifest): DCP's failure is turned into a line,
    # naming the file where its size tells.
    folder = checkpoint_folder(run, 2)
    _as_version_1(folder)
    damaged = folder / "__0_0.distcp"
    data = damaged.read_bytes()
    kept = data[:1000]  # into the parameters, not only the optimizer states after them
    damaged.write_bytes(kept + bytes(len(data) - len(kept)) if zeroed else kept)
    model = build_model("gpt-tiny", seed=0)
    state = TrainState(model, {}, canonical_names(model), [])
    with pytest.raises(ValueError) as error:
        load_checkpoint(folder, state, restore_rng=False, no_dist=True)
    message = str(error.value)
    if zeroed:
        assert message.startswith(f"{folder}: cannot read the checkpoint (UnpicklingError: ")
        assert "weights_only" not in message
    else:
        assert message.startswith(f"{folder}: cannot read the checkpoint: {damaged}: truncated: ")
    assert "\n" not in message


def test_a_checkpoint_that_fits_the_model_passes(saved_runs: dict[str, Path]) -> None:
    assert not dist.is_initialized()  # the launcher's process has no process group
    check_checkpoint_fits(checkpoint_folder(saved_runs["gpt"], 2), "gpt-tiny")
    check_checkpoint_fits(checkpoint_folder(saved_runs["untied"], 1), UNTIED)


@pytest.mark.parametrize(
    ("which", "model", "expected"),
    [
        (
            "gpt",
            "llama-tiny",
            "the checkpoint of 'gpt-tiny' has no parameter layers.0.embed_tokens.weight",
        ),
        ("gpt", {"n_layer": 2}, "the checkpoint of 'gpt-tiny' has no parameter layers.3.ln_f."),
        (
            "gpt",
            {"n_embd": 128},
            "parameter layers.0.wte.weight has shape (512, 64) in the checkpoint of 'gpt-tiny' "
            "but (512, 128) in this model",
        ),
        (
            "untied",
            "gpt-tiny",
            "the checkpoint of 'gpt-tiny-untied' has parameter layers.5.lm_head.weight, which "
            "this model has not",
        ),
    ],
    ids=["other-family", "fewer-layers", "wider", "a-parameter-more"],
)
def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(
    saved_runs: dict[str, Path], which: str, model: str | dict, expected: str
) -> None:
    folder = checkpoint_folder(saved_runs[which], 1)
    source = model if isinstance(model, str) else {**resolve_config("gpt-tiny").to_dict(), **model}
    with pytest.raises(ValueError) as error:
        check_checkpoint_fits(folder, source)
    message = str(error.value)
    assert message.startswith(f"{folder}: ") and expected in message, message
    assert "\n" not in message
