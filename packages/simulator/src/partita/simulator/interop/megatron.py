"""Megatron-LM: a plan as its command-line arguments, and its launch script read back.

The flags are those of ``megatron/training/arguments.py`` in NVIDIA/Megatron-LM at commit
000c4ac2 (after Megatron-Core 0.14). How a :class:`Uniform` maps:

- ``tp``, ``pp``: ``--tensor-model-parallel-size``, ``--pipeline-model-parallel-size``.
- ``interleaved-1f1b`` with ``chunks`` C: ``--num-virtual-stages-per-pipeline-rank C``
  (this version has no ``--virtual-pipeline-model-parallel-size``); where the blocks do not
  split evenly, ``--pipeline-model-parallel-layout`` gives the plan's stages exactly (Megatron
  otherwise asserts an even split). Imported: also ``--num-layers-per-virtual-pipeline-stage``.
- ``sp megatron``: ``--sequence-parallel``, which also splits the embedding's output and the
  head's input (``vocab_sp``); Megatron-LM turns it off at tp 1.
- ``dp``: ``zero1`` is ``--use-distributed-optimizer``; ``zero2``/``zero3`` are Megatron FSDP
  (``--use-megatron-fsdp --data-parallel-sharding-strategy optim_grads`` /
  ``optim_grads_params``, with the distributed optimizer, no gradient-accumulation fusion and
  ``--ckpt-format fsdp_dtensor``, as Megatron's FSDP guide says), which does not run with
  pipeline parallelism: there ZeRO-2/3 become the distributed optimizer. Imported: also
  ``--use-torch-fsdp2`` (ZeRO-3; ZeRO-2 with ``--torch-fsdp2-no-reshard-after-forward``).
- ``ckpt attention``: ``--recompute-granularity selective`` (the attention core, Megatron's
  default ``--recompute-modules core_attn``); ``full``: ``--recompute-granularity full
  --recompute-method uniform --recompute-num-layers 1``; ``selective-op`` has no Megatron-LM
  equivalent and becomes ``full``.
- batch: ``--micro-batch-size`` (per data-parallel rank) and ``--global-batch-size``;
  precision ``--bf16`` / ``--fp16`` (fp32: neither).

Not expressible: Ulysses (Megatron-LM has context parallelism, a different algorithm),
GPipe and zero-bubble schedules (it runs 1F1B), ZeRO-2/3 with a pipeline. Runs with tensor
parallelism need ``CUDA_DEVICE_MAX_CONNECTIONS=1`` in the environment, Megatron FSDP needs it
unset: the argument list cannot say so.

Reading a script: line continuations, comments, bash arrays (``ARGS=( ... )``,
``ARGS+=( ... )``) and ``$VAR`` / ``${VAR:-default}`` / ``$(( ))`` of literal values are
followed; conditionals are not evaluated (every assignment counts, the last wins). The
arguments are those after the ``*.py`` of the launch line (or a file of bare ``--flags``).
A flag read here whose value the script does not give literally is an error naming it.
Batch ramp-up (``--rampup-batch-size``) is read as its final ``--global-batch-size``; fp8
recipes as their ``--bf16``/``--fp16`` base.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from partita.formats import ModelDescription
from partita.formats.common import Ckpt, DpMode, Precision, SpMode
from partita.simulator.interop.uniform import (
    NO_PIPELINE,
    Rule,
    Uniform,
    nearest_by_rules,
    sp_off_without_tp,
    unmet,
)
from partita.simulator.search.partition import even_partition

TRAINER = "megatron"
VERSION = "Megatron-LM 000c4ac2 (megatron/training/arguments.py)"

_FSDP_STRATEGY: dict[str, str] = {"zero2": "optim_grads", "zero3": "optim_grads_params"}
_STRATEGY_DP: dict[str, DpMode] = {
    "optim": "zero1",
    "optim_grads": "zero2",
    "optim_grads_params": "zero3",
}
_EXPORTED_FAMILIES = ("gpt", "llama", "bert")
# Parallelisms of Megatron-LM that Partita's plans do not have.
_NOT_IN_PLANS = {
    "--context-parallel-size": "context parallelism",
    "--expert-model-parallel-size": "expert parallelism",
}


def _vocab_sp(u: Uniform) -> bool:
    """Megatron's embedding scatters to, and its head gathers from, the sequence-parallel
    region exactly when ``--sequence-parallel`` is on."""
    return u.sp == "megatron" and u.tp > 1


_RULES = (
    Rule(
        applies=lambda u: u.sp == "ulysses",
        what=lambda u: "Ulysses sequence parallelism (Megatron-LM has context parallelism instead)",
        fix=lambda u: replace(u, sp="megatron" if u.tp > 1 else "none"),
        note="Megatron-LM's sequence parallelism over the same devices; it has no Ulysses",
    ),
    Rule(
        applies=sp_off_without_tp,
        what=lambda u: "sequence parallelism at tp 1 (Megatron-LM turns it off there)",
        fix=lambda u: replace(u, sp="none"),
        note="Megatron-LM turns --sequence-parallel off at tp 1",
    ),
    Rule(
        applies=lambda u: u.vocab_sp != _vocab_sp(u),
        what=lambda u: (
            f"vocab sp {'on' if u.vocab_sp else 'off'} with sp {u.sp} at tp {u.tp} "
            "(Megatron-LM's embedding and head follow --sequence-parallel)"
        ),
        fix=lambda u: replace(u, vocab_sp=_vocab_sp(u)),
        note="the embedding and head follow --sequence-parallel",
    ),
    NO_PIPELINE,
    Rule(
        applies=lambda u: u.schedule == "gpipe",
        what=lambda u: "the GPipe schedule (Megatron-LM runs 1F1B)",
        fix=lambda u: replace(u, schedule="1f1b"),
        note="Megatron-LM runs 1F1B",
    ),
    Rule(
        applies=lambda u: u.schedule == "zb-h1",
        what=lambda u: "the zero-bubble schedule ZB-H1 (no Megatron-LM argument selects it)",
        fix=lambda u: replace(u, schedule="1f1b"),
        note="Megatron-LM runs 1F1B",
    ),
    Rule(
        applies=lambda u: u.dp in _FSDP_STRATEGY and u.pp > 1,
        what=lambda u: f"{u.dp} with pipeline parallelism (Megatron FSDP runs without a pipeline)",
        fix=lambda u: replace(u, dp="zero1"),
        note="distributed optimizer; Megatron FSDP runs without a pipeline",
    ),
    Rule(
        applies=lambda u: u.ckpt == "selective-op",
        what=lambda u: (
            "ckpt selective-op (Megatron-LM recomputes the attention core, listed modules "
            "or whole blocks, not every other matmul)"
        ),
        fix=lambda u: replace(u, ckpt="full"),
        note="whole blocks recomputed: they keep less than selective-op, so the plan still fits",
    ),
)


def unsupported(u: Uniform) -> list[str]:
    """Why Megatron-LM cannot run ``u`` as stated; empty when it can."""
    return unmet(_RULES, u)


def nearest(u: Uniform) -> tuple[Uniform, list[str]]:
    """The closest setting Megatron-LM expresses, and what changed to reach it."""
    return nearest_by_rules(_RULES, u)


# --------------------------------------------------------------------------- export


def export(u: Uniform, model: ModelDescription) -> str:
    """``u`` for ``model`` as Megatron-LM arguments, one flag per line with ``\\``
    continuations; ValueError where Megatron-LM cannot express it."""
    problems = unsupported(u)
    if problems:
        raise ValueError(f"Megatron-LM cannot express {u.strategy_text()}: {'; '.join(problems)}")
    if model.family not in _EXPORTED_FAMILIES:
        raise ValueError(
            f"{model.name}: Megatron-LM arguments are written for {', '.join(_EXPORTED_FAMILIES)} "
            f"models, not {model.family}"
        )
    u.to_plan(model)  # the model splits so (heads, batch, stages), else ValueError
    lines = [*_model_flags(model), *_parallel_flags(u, len(model.blocks)), *_batch_flags(u)]
    return " \\\n".join(lines) + "\n"


def _model_flags(model: ModelDescription) -> Iterator[str]:
    yield f"--num-layers {len(model.blocks)}"
    yield f"--hidden-size {model.hidden_size}"
    yield f"--ffn-hidden-size {model.ffn_size}"
    yield f"--num-attention-heads {model.num_heads}"
    if model.num_kv_heads != model.num_heads:
        yield "--group-query-attention"
        yield f"--num-query-groups {model.num_kv_heads}"
    yield f"--seq-length {model.seq_len}"
    yield f"--max-position-embeddings {model.seq_len}"
    if model.family == "llama":
        # Megatron's defaults are GPT's (LayerNorm, GELU, learned positions, tied head).
        yield "--position-embedding-type rope"
        yield "--normalization RMSNorm"
        yield "--swiglu"
        yield "--disable-bias-linear"
        yield "--untie-embeddings-and-output-weights"


def _parallel_flags(u: Uniform, blocks: int) -> Iterator[str]:
    yield f"--tensor-model-parallel-size {u.tp}"
    yield f"--pipeline-model-parallel-size {u.pp}"
    stages = u.pp * u.chunks
    if u.pp > 1 and blocks % stages:
        yield f"--pipeline-model-parallel-layout {_layout(even_partition(blocks, stages))}"
    elif u.chunks > 1:
        yield f"--num-virtual-stages-per-pipeline-rank {u.chunks}"
    if u.sp == "megatron":
        yield "--sequence-parallel"
    if u.dp == "zero1":
        yield "--use-distributed-optimizer"
    elif u.dp in _FSDP_STRATEGY:
        yield "--use-megatron-fsdp"
        yield f"--data-parallel-sharding-strategy {_FSDP_STRATEGY[u.dp]}"
        yield "--use-distributed-optimizer"
        yield "--no-gradient-accumulation-fusion"
        yield "--ckpt-format fsdp_dtensor"
    if u.ckpt == "attention":
        yield "--recompute-granularity selective"
    elif u.ckpt == "full":
        yield "--recompute-granularity full"
        yield "--recompute-method uniform"
        yield "--recompute-num-layers 1"


def _batch_flags(u: Uniform) -> Iterator[str]:
    yield f"--micro-batch-size {u.micro_batch_size}"
    yield f"--global-batch-size {u.global_batch_size}"
    if u.precision != "fp32":
        yield f"--{u.precision}"


def _layout(stage_blocks: tuple[int, ...]) -> str:
    """Megatron's layout string: virtual stages in order, split by ``|``, the embedding
    (``E``) on the first and the loss (``L``) on the last."""
    stages = [f"t*{count}" for count in stage_blocks]
    stages[0] = "E" + stages[0]
    stages[-1] += "L"
    return "|".join(stages)


def _layout_stages(layout: str) -> list[int]:
    """Blocks per virtual stage of a layout string (``(...)*n`` and ``x*n`` unrolled)."""
    text = layout.replace(",", "")
    text = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    text = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    return [stage.count("t") for stage in text.split("|")]


# --------------------------------------------------------------------------- import


def import_config(text: str, *, world_size: int | None, source: str) -> Uniform:
    """The strategy a Megatron-LM launch script (or a file of its arguments) runs.

    ``world_size`` overrides what the script says (torchrun's ``--nproc_per_node`` x
    ``--nnodes``, else ``WORLD_SIZE`` or ``GPUS_PER_NODE`` x ``NUM_NODES``); ValueError in
    one line naming ``source`` and the flag at fault.
    """
    script = _read_script(text, source)
    args = _Args(_flag_values(script.args), source)
    devices = world_size if world_size is not None else _script_world_size(script, source)
    for flag, what in _NOT_IN_PLANS.items():
        if args.integer(flag, 1) > 1:
            raise ValueError(f"{source}: {flag} {args.integer(flag, 1)}: plans have no {what}")
    for flag, instead in (
        ("--virtual-pipeline-model-parallel-size", "--num-virtual-stages-per-pipeline-rank"),
        ("--checkpoint-activations", "--recompute-granularity"),
    ):
        if flag in args.values:
            raise ValueError(f"{source}: {flag} is not an argument of {VERSION}: use {instead}")
    tp = args.integer("--tensor-model-parallel-size", 1)
    pp = args.integer("--pipeline-model-parallel-size", 1)
    if tp < 1 or pp < 1 or devices % (tp * pp):
        where = "--world-size" if world_size is not None else "the script's device count"
        raise ValueError(
            f"{source}: --tensor-model-parallel-size {tp} x --pipeline-model-parallel-size "
            f"{pp} does not divide {devices} devices ({where})"
        )
    chunks = _chunks(args, pp)
    micro = args.optional_integer("--micro-batch-size")
    if micro is None:
        raise ValueError(f"{source}: no --micro-batch-size (Megatron-LM requires it)")
    global_batch = args.integer("--global-batch-size", micro * (devices // (tp * pp)))
    sp: SpMode = "megatron" if "--sequence-parallel" in args.values and tp > 1 else "none"
    precision, dp, ckpt = _precision(args), _dp_mode(args), _ckpt(args, pp * chunks)
    try:
        return Uniform(
            world_size=devices,
            global_batch_size=global_batch,
            micro_batch_size=micro,
            precision=precision,
            tp=tp,
            pp=pp,
            sp=sp,
            dp=dp,
            ckpt=ckpt,
            schedule="interleaved-1f1b" if chunks > 1 else "1f1b",
            chunks=chunks,
            vocab_sp=sp == "megatron",
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


@dataclass
class _Args:
    """The script's arguments by flag (the last occurrence wins, as with argparse)."""

    values: dict[str, list[str]]
    source: str

    def text(self, flag: str) -> str | None:
        if flag not in self.values:
            return None
        values = self.values[flag]
        if len(values) != 1:
            raise ValueError(f"{self.source}: {flag}: expected one value, got {len(values)}")
        value = values[0]
        if "$" in value or "`" in value:
            raise ValueError(
                f"{self.source}: {flag} is {value!r}, which the script does not set "
                "literally: write the value there"
            )
        return value

    def integer(self, flag: str, default: int) -> int:
        value = self.optional_integer(flag)
        return default if value is None else value

    def optional_integer(self, flag: str) -> int | None:
        value = self.text(flag)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{self.source}: {flag}: expected an integer, got {value!r}") from None


def _chunks(args: _Args, pp: int) -> int:
    given = [
        flag
        for flag in (
            "--num-virtual-stages-per-pipeline-rank",
            "--num-layers-per-virtual-pipeline-stage",
            "--pipeline-model-parallel-layout",
        )
        if flag in args.values
    ]
    if len(given) > 1:
        raise ValueError(f"{args.source}: give one of {' and '.join(given)}, not both")
    if not given:
        return 1
    flag = given[0]
    if flag == "--num-virtual-stages-per-pipeline-rank":
        chunks = args.integer(flag, 1)
    elif flag == "--num-layers-per-virtual-pipeline-stage":
        per_stage = args.integer(flag, 1)
        layers = args.optional_integer("--num-layers")
        if layers is None:
            raise ValueError(f"{args.source}: {flag} needs --num-layers to count the stages")
        if per_stage < 1 or layers % (pp * per_stage):
            raise ValueError(
                f"{args.source}: {flag} {per_stage} does not split --num-layers {layers} "
                f"over {pp} pipeline stages"
            )
        chunks = layers // (pp * per_stage)
    else:
        stages = _layout_stages(args.text(flag) or "")
        if len(stages) % pp:
            raise ValueError(
                f"{args.source}: {flag} has {len(stages)} stages, not a multiple of "
                f"--pipeline-model-parallel-size {pp}"
            )
        chunks = len(stages) // pp
    if chunks < 1:
        raise ValueError(f"{args.source}: {flag}: expected a positive count, got {chunks}")
    if chunks > 1 and pp < 2:
        raise ValueError(f"{args.source}: {flag} needs --pipeline-model-parallel-size above 1")
    return chunks


def _dp_mode(args: _Args) -> DpMode:
    distributed_optimizer = "--use-distributed-optimizer" in args.values
    if "--use-torch-fsdp2" in args.values:
        return "zero2" if "--torch-fsdp2-no-reshard-after-forward" in args.values else "zero3"
    if "--use-megatron-fsdp" in args.values:
        strategy = args.text("--data-parallel-sharding-strategy") or "no_shard"
        if strategy == "no_shard":
            return "zero1" if distributed_optimizer else "ddp"
        if strategy not in _STRATEGY_DP:
            raise ValueError(
                f"{args.source}: --data-parallel-sharding-strategy: expected one of no_shard, "
                f"{', '.join(_STRATEGY_DP)}, got {strategy!r}"
            )
        return _STRATEGY_DP[strategy]
    return "zero1" if distributed_optimizer else "ddp"


def _ckpt(args: _Args, virtual_stages: int) -> Ckpt:
    granularity = args.text("--recompute-granularity")
    if granularity is None and "--recompute-activations" in args.values:
        granularity = "selective"  # what Megatron-LM turns --recompute-activations into
    if granularity is None:
        return "none"
    if granularity == "selective":
        modules = args.values.get("--recompute-modules")
        if modules is None or modules == ["core_attn"]:
            return "attention"
        if not modules:
            return "none"
        raise ValueError(
            f"{args.source}: --recompute-modules {' '.join(modules)}: a plan recomputes the "
            "attention core (core_attn) or whole blocks"
        )
    if granularity != "full":
        raise ValueError(
            f"{args.source}: --recompute-granularity: expected full or selective, "
            f"got {granularity!r}"
        )
    if args.text("--recompute-method") != "block":
        return "full"  # uniform recomputes every block, in units of --recompute-num-layers
    recomputed = args.integer("--recompute-num-layers", 0)
    layers = args.optional_integer("--num-layers")
    if layers is None:
        raise ValueError(f"{args.source}: --recompute-method block needs --num-layers")
    per_stage = layers // virtual_stages
    if recomputed >= per_stage:
        return "full"
    if recomputed == 0:
        return "none"
    raise ValueError(
        f"{args.source}: --recompute-num-layers {recomputed} recomputes {recomputed} of the "
        f"{per_stage} blocks of each stage: a layer-wise plan, not one strategy"
    )


def _precision(args: _Args) -> Precision:
    if "--bf16" in args.values and "--fp16" in args.values:
        raise ValueError(f"{args.source}: --bf16 and --fp16 both given")
    if "--bf16" in args.values:
        return "bf16"
    return "fp16" if "--fp16" in args.values else "fp32"


def _flag_values(tokens: list[str]) -> dict[str, list[str]]:
    """``--flag v1 v2 --other`` -> {``--flag``: [v1, v2], ``--other``: []}."""
    values: dict[str, list[str]] = {}
    current: list[str] | None = None
    for token in tokens:
        if token.startswith("--"):
            flag, sep, value = token.partition("=")
            current = values[flag] = [value] if sep else []
        elif current is not None:
            current.append(token)
    return values


# --------------------------------------------------------------------------- bash reading


@dataclass
class _Script:
    args: list[str]
    launcher: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)


_ARRAY = re.compile(r"^\s*(?:export\s+|declare\s+-a\s+|local\s+)?([A-Za-z_]\w*)(\+?)=\((.*)$")
_SCALAR = re.compile(r"^([A-Za-z_]\w*)=(.*)$", re.S)
_ARRAY_REF = re.compile(r"^\$\{([A-Za-z_]\w*)\[[@*]\]\}$|^\$([A-Za-z_]\w*)$|^\$\{([A-Za-z_]\w*)\}$")
_VAR_REF = re.compile(r"\$\{([A-Za-z_]\w*|\d+)(?::?-([^}]*))?\}|\$([A-Za-z_]\w*|\d)")
_ARITHMETIC = re.compile(r"\$\(\(([^()]*)\)\)")
_LAUNCHER_NPROC = ("--nproc_per_node", "--nproc-per-node")
_DECLARATIONS = ("export", "local", "readonly", "declare", "typeset")


def _read_script(text: str, source: str) -> _Script:
    arrays: dict[str, list[str]] = {}
    variables: dict[str, str] = {}
    commands: list[list[str]] = []
    lines = _logical_lines(text)
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        opened = _ARRAY.match(line)
        if opened:
            name, append, rest = opened.groups()
            body = [rest]
            while not _closes(body[-1]) and index < len(lines):
                body.append(lines[index])
                index += 1
            elements = _array_elements(body, arrays, variables)
            arrays[name] = [*arrays.get(name, []), *elements] if append else elements
            continue
        tokens = _split(line)
        if tokens and tokens[0] in _DECLARATIONS:
            tokens = [token for token in tokens[1:] if not token.startswith("-")]
        if not tokens:
            continue
        assignments = [_SCALAR.match(token) for token in tokens]
        if all(assignments):
            for match in assignments:
                assert match is not None
                variables[match.group(1)] = _expand(match.group(2), variables)
            continue
        command = _expand_command(tokens, arrays, variables)
        if command:
            commands.append(command)
    return _launch(commands, variables, source)


def _launch(commands: list[list[str]], variables: dict[str, str], source: str) -> _Script:
    """The launch line: the command whose arguments after its ``*.py`` hold the most flags;
    without one, the lines that are bare ``--flags`` (an arguments file)."""
    best: _Script | None = None
    for tokens in commands:
        scripts = [i for i, token in enumerate(tokens) if token.endswith(".py")]
        if not scripts:
            continue
        args = tokens[scripts[0] + 1 :]
        if best is None or _flag_count(args) > _flag_count(best.args):
            best = _Script(args, tokens[: scripts[0]], variables)
    if best is not None and _flag_count(best.args):
        return best
    bare = [token for tokens in commands if tokens[0].startswith("--") for token in tokens]
    if not bare:
        raise ValueError(
            f"{source}: no Megatron-LM arguments found (expected a line running pretrain_*.py, "
            "or --flags)"
        )
    return _Script(bare, [], variables)


def _flag_count(tokens: list[str]) -> int:
    return sum(token.startswith("--") for token in tokens)


def _script_world_size(script: _Script, source: str) -> int:
    launcher = _flag_values(script.launcher)
    nproc = next((launcher[f] for f in _LAUNCHER_NPROC if f in launcher), None)
    nnodes = launcher.get("--nnodes", ["1"])
    candidates = [
        (nproc[0], nnodes[0]) if nproc and nnodes else None,
        (script.variables.get("WORLD_SIZE", ""), "1"),
        (
            script.variables.get("GPUS_PER_NODE", ""),
            script.variables.get("NUM_NODES", script.variables.get("NNODES", "")),
        ),
    ]
    for candidate in candidates:
        if candidate and all(part.isdigit() and int(part) > 0 for part in candidate):
            return int(candidate[0]) * int(candidate[1])
    raise ValueError(
        f"{source}: the script does not state the number of devices literally: give --world-size"
    )


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    joined = re.sub(r"\\\r?\n", " ", text)
    return joined.splitlines()


def _split(line: str) -> list[str]:
    """Shell words of one line, comments dropped; a line shlex cannot read (a quote that
    spans lines) holds nothing this reader needs, so it yields no words."""
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return []


def _closes(line: str) -> bool:
    words = _split(line)
    return bool(words) and words[-1].endswith(")") and not words[-1].endswith("))")


def _array_elements(
    body: list[str], arrays: dict[str, list[str]], variables: dict[str, str]
) -> list[str]:
    words = [word for line in body for word in _split(line)]
    if words and words[-1].endswith(")"):
        words[-1] = words[-1][:-1]
        if not words[-1]:
            words.pop()
    return _expand_command(words, arrays, variables)


def _expand_command(
    words: list[str], arrays: dict[str, list[str]], variables: dict[str, str]
) -> list[str]:
    """Arrays spliced in, variables substituted; elements holding several words (``"--a
    1"``) split, as an unquoted expansion does."""
    out: list[str] = []
    for word in words:
        reference = _ARRAY_REF.match(word)
        name = next((g for g in reference.groups() if g), None) if reference else None
        if name is not None and name in arrays:
            out.extend(part for element in arrays[name] for part in element.split())
            continue
        out.extend(_expand(word, variables).split() or [""])
    return [word for word in out if word]


def _expand(word: str, variables: dict[str, str]) -> str:
    """``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``$(( ))`` of literal values; what
    cannot be resolved is left as written (so a flag reading it names it)."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        if name in variables and "$" not in variables[name]:
            return variables[name]
        default = match.group(2)
        return default if default is not None and "$" not in default else match.group(0)

    expanded = _VAR_REF.sub(substitute, word)
    return _ARITHMETIC.sub(_arithmetic, expanded)


def _arithmetic(match: re.Match[str]) -> str:
    expression = match.group(1).strip()
    if not re.fullmatch(r"[\d\s+\-*/()]+", expression):
        return match.group(0)
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return match.group(0)
    value = _evaluate(tree.body)
    return match.group(0) if value is None else str(value)


def _evaluate(node: ast.expr) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div | ast.FloorDiv) and right:
            return left // right
    return None
