"""Bad inputs and faults for ``test_bad_inputs.py``: what a user does wrong, and the one line
Partita must answer with.

Each case prepares files in an empty folder (``setup``), runs ``partita ARGV`` there and
expects exit status ``code`` and a last stderr line matching ``message`` in full. With
``lines`` 1 nothing else may be printed. With ``needs_run`` the folder holds a copy of a real
run folder ``run`` (``{run}``: gpt-tiny from the HF config folder ``hf``, named relative, 2
steps, a checkpoint after each) that ``setup`` may damage first; ``{tmp}`` is the case's
folder, and the command runs there.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy, save

Setup = Callable[[Path], None]


@dataclass(frozen=True)
class BadInput:
    name: str
    argv: tuple[str, ...]
    message: str  # a regular expression for the whole last line of stderr
    setup: Setup | None = None
    code: int = 2
    lines: int | None = 1  # stderr lines in all (None: any, e.g. a run's progress first)
    needs_run: bool = False


def good_plan(folder: Path, *, world: int = 1, name: str = "plan.json") -> Path:
    return save(
        Plan(
            world_size=world,
            mesh_axis_order=("pp", "dp", "tp"),
            global_batch_size=4,
            num_micro_batches=1,
            pipeline=PipelineConfig(degree=1, schedule="gpipe", stage_num_layers=(4,)),
            layers=(LayerStrategy(),) * 4,
            vocab=VocabStrategy(),
        ),
        folder / name,
    )


def _plan_text(folder: Path, text: str | bytes, name: str = "plan.json") -> None:
    data = text.encode() if isinstance(text, str) else text
    (folder / name).write_bytes(data)


def _plan_edited(**changes: object) -> Setup:
    def setup(folder: Path) -> None:
        document = json.loads(good_plan(folder).read_text())
        document.update(changes)
        (folder / "plan.json").write_text(json.dumps(document))

    return setup


def _both(*setups: Setup) -> Setup:
    def setup(folder: Path) -> None:
        for step in setups:
            step(folder)

    return setup


def _file(name: str, data: bytes) -> Setup:
    return lambda folder: (folder / name).write_bytes(data)


def _plan(folder: Path) -> None:
    good_plan(folder)


TRAIN = ("train", "--plan", "{tmp}/plan.json", "--model", "gpt-tiny", "--run-dir", "{tmp}/out")
P = r"\S*plan\.json"

CASES: tuple[BadInput, ...] = (
    # -- settings -----------------------------------------------------------------------------
    BadInput(
        "steps zero",
        (*TRAIN, "--steps", "0"),
        r"partita train: error: --steps must be between 1 and 2147483647, got 0",
        _plan,
    ),
    BadInput(
        "steps huge",
        (*TRAIN, "--steps", str(2**40)),
        r"partita train: error: --steps must be between 1 and 2147483647, got 1099511627776",
        _plan,
    ),
    *(
        BadInput(
            f"lr {lr}",
            (*TRAIN, f"--lr={lr}"),
            rf"partita train: error: --lr must be a positive finite number, got {value}",
            _plan,
        )
        for lr, value in (("nan", "nan"), ("inf", "inf"), ("-1", "-1.0"), ("0", "0.0"))
    ),
    BadInput(
        "seed negative",
        (*TRAIN, "--seed=-1"),
        r"partita train: error: --seed must be between 0 and 2147483647, got -1",
        _plan,
    ),
    BadInput(
        "keep no checkpoint",
        (*TRAIN, "--keep-checkpoints", "0"),
        r"partita train: error: --keep-checkpoints must be between 1 and 2147483647, got 0",
        _plan,
    ),
    BadInput(
        "timeout zero",
        (*TRAIN, "--timeout", "0"),
        r"partita train: error: --timeout must be between 0 and 604800 seconds, got 0.0",
        _plan,
    ),
    BadInput(
        "steps not a number",
        (*TRAIN, "--steps", "many"),
        r"partita train: error: argument --steps: invalid int value: 'many' "
        r"\(see partita train --help\)",
        _plan,
    ),
    # -- data ---------------------------------------------------------------------------------
    BadInput(
        "data missing",
        (*TRAIN, "--data", "{tmp}/none.txt"),
        r"partita train: error: --data: no such file '\S+/none.txt'",
        _plan,
    ),
    BadInput(
        "data a folder",
        (*TRAIN, "--data", "{tmp}"),
        r"partita train: error: --data: \S+ is a folder; give a UTF-8 text file",
        _plan,
    ),
    BadInput(
        "data empty",
        (*TRAIN, "--data", "{tmp}/empty.txt"),
        r"partita train: error: --data: \S+/empty.txt: the file is empty",
        _both(_plan, _file("empty.txt", b"")),
    ),
    BadInput(
        "data binary",
        (*TRAIN, "--data", "{tmp}/binary.txt"),
        r"partita train: error: --data: \S+/binary.txt: cannot read as UTF-8 text: .*",
        _both(_plan, _file("binary.txt", bytes(range(128, 256)) * 40)),
    ),
    BadInput(
        "data too short",
        (*TRAIN, "--data", "{tmp}/short.txt"),
        r"partita train: error: --data: \S+/short.txt: the text has 12 tokens: too few for "
        r"one batch of 4 x 128",
        _both(_plan, _file("short.txt", b"hello, world")),
    ),
    BadInput(
        "data for a vision model",
        ("train", "--plan", "{tmp}/plan.json", "--model", "vit-tiny", "--data", "{tmp}/t.txt"),
        r"partita train: error: --data: text files feed GPT and LLaMA models, not vit",
        _both(
            lambda folder: _vit_plan(folder),
            _file("t.txt", b"some text " * 1000),
        ),
    ),
    # -- plan ---------------------------------------------------------------------------------
    BadInput(
        "plan missing",
        TRAIN,
        rf"partita train: error: {P}: cannot read: No such file or directory",
    ),
    BadInput(
        "plan empty",
        TRAIN,
        rf"partita train: error: {P}: not valid JSON: Expecting value at line 1 column 1",
        lambda folder: _plan_text(folder, b""),
    ),
    BadInput(
        "plan truncated",
        TRAIN,
        rf"partita train: error: {P}: not valid JSON: Unterminated string starting at line \d+ "
        r"column \d+",
        lambda folder: _plan_text(folder, good_plan(folder).read_bytes()[:-40]),
    ),
    BadInput(
        "plan binary",
        TRAIN,
        rf"partita train: error: {P}: not UTF-8 text \(byte 0\)",
        lambda folder: _plan_text(folder, b"\xff\xfe\x00\x01" * 20),
    ),
    BadInput(
        "plan with a byte-order mark",
        TRAIN,
        rf"partita train: error: {P}: starts with a byte order mark; save it as UTF-8 without one",
        lambda folder: _plan_text(folder, b"\xef\xbb\xbf" + good_plan(folder).read_bytes()),
    ),
    BadInput(
        "plan of a wrong type",
        TRAIN,
        rf"partita train: error: {P}: world_size: expected an integer, got '1'",
        _plan_edited(world_size="1"),
    ),
    BadInput(
        "plan newer",
        TRAIN,
        rf"partita train: error: {P}: version: version 99 is newer than the supported "
        r"version \d+ of partita.plan; upgrade partita-formats to read it",
        _plan_edited(version=99),
    ),
    BadInput(
        "plan global batch huge",
        TRAIN,
        rf"partita train: error: {P}: global_batch_size: must be < 2\^31 = 2147483648, got "
        r"1000000000000000000000000000000",
        _plan_edited(global_batch_size=10**30),
    ),
    BadInput(
        "plan for another world size",
        (*TRAIN, "--nproc", "2"),
        rf"partita train: error: {P}: world_size: the plan is for 1 devices but 2 are running",
        _plan,
    ),
    BadInput(
        "tp that does not divide the heads",
        TRAIN,
        rf"partita train: error: {P}: layers\[0\]\.tp: tensor-parallel degree 3 does not divide "
        r"num_heads 4 of layer 'blocks.0'",
        _plan_edited(
            world_size=3,
            layers=[{"tp": 3, "sp": "none", "dp": "ddp", "ckpt": "none"}] * 4,
            vocab={"tp": 3, "sp": False, "dp": "ddp"},
        ),
    ),
    BadInput(
        "plan with a unicode name",
        ("train", "--plan", "{tmp}/plän ✓.json", "--model", "gpt-tiny"),
        r"partita train: error: \S*plän ✓\.json: not valid JSON: .*",
        lambda folder: _plan_text(folder, b"{", name="plän ✓.json"),
    ),
    # -- model --------------------------------------------------------------------------------
    BadInput(
        "model unknown",
        ("train", "--plan", "{tmp}/plan.json", "--model", "gpt-huge"),
        r"partita train: error: --model gpt-huge: unknown model 'gpt-huge': .*",
        _plan,
    ),
    BadInput(
        "model folder with a broken config",
        ("train", "--plan", "{tmp}/plan.json", "--model", "{tmp}/hf"),
        r"partita train: error: --model \S+/hf: \S+/hf/config.json: unreadable config: "
        r"Expecting value: line 1 column 35 \(char 34\)",
        _both(_plan, lambda folder: _broken_config(folder)),
    ),
    # -- run folders --------------------------------------------------------------------------
    BadInput(
        "run folder holding another run",
        ("train", "--plan", "{tmp}/plan.json", "--model", "hf", "--run-dir", "{run}"),
        r"partita train: error: --run-dir: \S+ holds another run \(run_report.json, "
        r"steps.jsonl, plan.json, checkpoints, train.log\); continue it with --resume \S+, "
        r"replace it with --overwrite, or choose another folder",
        _plan,
        needs_run=True,
    ),
    BadInput(
        "run folder under a file",
        (*TRAIN[:-1], "{tmp}/plan.json/run"),
        r"partita train: error: --run-dir: cannot write to \S+/plan.json/run: Not a directory",
        _plan,
    ),
    BadInput(
        "run folder is a file",
        (*TRAIN[:-1], "{tmp}/plan.json"),
        r"partita train: error: --run-dir: \S+/plan.json is a file, not a folder",
        _plan,
    ),
    BadInput(
        "resume what is not a run",
        ("train", "--resume", "{tmp}"),
        r"partita train: error: --resume: \S+ is not a run folder \(no run_report.json\)",
    ),
    BadInput(
        "resume and overwrite",
        ("train", "--resume", "{run}", "--overwrite"),
        r"partita train: error: --overwrite: a resumed run continues its own folder; "
        r"nothing is replaced",
        needs_run=True,
    ),
    BadInput(
        "resume into another folder",
        ("train", "--resume", "{run}", "--run-dir", "{tmp}/x"),
        r"partita train: error: --run-dir: a resumed run continues in its own folder "
        r"\(--resume\)",
        needs_run=True,
    ),
    BadInput(
        "resume with fewer steps than done",
        ("train", "--resume", "{run}", "--steps", "2"),
        r"partita train: error: --steps: \S+ is after step 2 of 2 already; give --steps above "
        r"2 to train on",
        needs_run=True,
    ),
    BadInput(
        "resume with another learning rate",
        ("train", "--resume", "{run}", "--lr", "0.5"),
        r"partita train: error: --lr: a resumed run keeps its own \(lr 0.001\)",
        needs_run=True,
    ),
    BadInput(
        "export into a folder that is not empty",
        ("export", "{run}", "--out", "{tmp}"),
        r"partita export: error: --out: \S+ exists and is not empty",
        _plan,
        needs_run=True,
    ),
    # -- checkpoints --------------------------------------------------------------------------
    BadInput(
        "resume after the model's config changed",
        ("train", "--resume", "{run}", "--steps", "4"),
        r"partita train: error: \S+/step-00000002: parameter \S+ has shape \(\d+(, \d+)*\) in the "
        r"checkpoint of 'hf' but \(\d+(, \d+)*\) in this model",
        lambda folder: _edit_json(folder / "hf" / "config.json", n_embd=96),
        needs_run=True,
    ),
    BadInput(
        "resume with no intact checkpoint",
        ("train", "--resume", "{run}", "--steps", "4"),
        r"partita train: error: \S+/checkpoints: no intact checkpoint to resume from: "
        r"checkpoint step-00000002 is damaged \(.*__0_0.distcp: .*\); checkpoint step-00000001 "
        r"is damaged \(.*__0_0.distcp: .*\)",
        lambda folder: [
            _flip(folder / f"run/checkpoints/step-0000000{i}/__0_0.distcp") for i in (1, 2)
        ],
        needs_run=True,
    ),
    BadInput(
        "export a damaged checkpoint folder",
        ("export", "{run}/checkpoints/step-00000002", "--out", "{tmp}/exported"),
        r"partita export: error: \S+/step-00000002/__0_0.distcp: SHA-256 differs from the "
        r"manifest's \(the file changed after the save\)",
        lambda folder: _flip(folder / "run/checkpoints/step-00000002/__0_0.distcp"),
        needs_run=True,
    ),
    BadInput(
        "export a run whose newest checkpoint lost its manifest",
        ("export", "{run}", "--out", "{tmp}/exported"),
        r"partita export: wrote \S+/exported from step 1 of \S+/run \(checkpoint "
        r"\S+/step-00000001\)",
        lambda folder: (folder / "run/checkpoints/step-00000002/manifest.json").unlink(),
        code=0,
        lines=2,
        needs_run=True,
    ),
    # -- profiles -----------------------------------------------------------------------------
    BadInput(
        "simulate timings that overflow",
        (
            *("simulate", "--plan", "plan.json", "--hardware", "hardware_profile.json"),
            *("--model-profile", "model_profile.json", "--model", "model_description.json"),
        ),
        r"partita simulate: error: model profile layer_types\[\d+\]\.timings\[\d+\] .*: "
        r"forward_s 8e\+307 makes the predicted time of .* overflow \(2\^1023 or more\)",
        lambda folder: _examples(folder, timing=8e307),
    ),
    BadInput(
        "a profile number beyond 2^1023",
        ("show", "model_profile.json"),
        r"partita show: error: model_profile.json: layer_types\[0\]\.timings\[0\]\.forward_s: .*",
        lambda folder: _examples(folder, timing=1e308),
    ),
    BadInput(
        "export what is not a run",
        ("export", "{tmp}", "--out", "{tmp}/hf-out"),
        r"partita export: error: \S+: neither a checkpoint nor a run folder with checkpoints",
    ),
)


def _vit_plan(folder: Path) -> None:
    document = json.loads(good_plan(folder).read_text())
    document["layers"] = document["layers"][:3]
    document["pipeline"]["stage_num_layers"] = [3]
    (folder / "plan.json").write_text(json.dumps(document))


def _broken_config(folder: Path) -> None:
    (folder / "hf").mkdir()
    (folder / "hf" / "config.json").write_text('{"model_type": "gpt2", "n_layer": ')


def _edit_json(path: Path, **changes: object) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def _flip(path: Path, at: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def _examples(folder: Path, *, timing: float) -> None:
    """The example plan, profiles and description, every forward time set to ``timing``."""
    for name in ("plan", "hardware_profile", "model_profile", "model_description"):
        document = json.loads((EXAMPLES / f"{name}.json").read_text())
        if name == "model_profile":
            for layer_type in document["layer_types"]:
                for entry in layer_type["timings"]:
                    entry["forward_s"] = timing
        (folder / f"{name}.json").write_text(json.dumps(document))
