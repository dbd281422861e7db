"""``partita profile import-galvatron DIR --out-dir OUT``: convert Galvatron's profiles (no torch).

Reads Galvatron's hardware files (``allreduce_bandwidth_*``, ``p2p_bandwidth_*``,
``overlap_coefficient*``, optionally ``sp_time_*``) and model files (``computation_profiling_*``,
``memory_profiling_*``) found anywhere under DIR, and writes ``hardware_profile.json`` and
``model_profile.json``. The model profile's dtype is Galvatron's precision, from the file names
(``computation_profiling_bf16_...``); a ``note:`` line says so, and names what was skipped. A part
that cannot be converted gets one error line (file and key) and exit status 2; the other part is
still written. Units and choices: docs/profiler.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from partita.formats import HardwareProfile, ModelProfile, save
from partita.formats.common import FAMILIES, PRECISIONS
from partita.formats.schema import MAX_INTEGER
from partita.formats.text_table import human_bytes, table

EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, metavar="DIR", help="Galvatron's profile files")
    parser.add_argument("--out-dir", type=Path, required=True, help="where the profiles go")
    parser.add_argument("--nodes", type=int, help="number of nodes (default: from file names)")
    parser.add_argument("--gpus-per-node", type=int, help="default: from file names")
    parser.add_argument("--device-name", default="GPU (imported from Galvatron)")
    parser.add_argument(
        "--device-memory-gb", type=float, default=80.0, help="memory of one GPU, 1 GB = 1e9 bytes"
    )
    parser.add_argument("--name", help="hardware profile name (default galvatron-NxG)")
    parser.add_argument("--model", help="model name (default: from the computation file name)")
    parser.add_argument(
        "--dtype",
        choices=PRECISIONS,
        help="the profiles' precision (default: Galvatron's, from the file names)",
    )
    parser.add_argument(
        "--family", choices=FAMILIES, help="names layer types as partita.models does"
    )
    parser.add_argument(
        "--layer-types",
        type=_mapping,
        help="Galvatron layer type -> ours, e.g. 0=gpt_block,embedding=gpt_embedding,head=gpt_head "
        "(a key repeated maps to several names)",
    )
    parser.add_argument(
        "--embedding-share",
        type=float,
        default=0.0,
        help="share of Galvatron's 'other' time given to the embedding; the head gets the rest",
    )


def _mapping(text: str) -> dict[str, tuple[str, ...]]:
    mapping: dict[str, tuple[str, ...]] = {}
    for item in text.split(","):
        key, sep, name = (part.strip() for part in item.partition("="))
        if not sep or not key or not name:
            raise argparse.ArgumentTypeError(f"expected T=layer_type, got {item!r}")
        mapping[key] = (*mapping.get(key, ()), name)
    return mapping


def run(args: argparse.Namespace) -> int:
    from partita.profiler.galvatron import ImportOptions, import_directory

    # Up to 2^53 bytes, what a Partita file holds (NaN fails both comparisons).
    if not 0 < args.device_memory_gb * 1e9 <= MAX_INTEGER or not 0 <= args.embedding_share <= 1:
        print(
            "error: --device-memory-gb must be > 0 and at most 9007199 (2^53 bytes), "
            "--embedding-share in 0..1",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    options = ImportOptions(
        num_nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        device_name=args.device_name,
        device_memory_bytes=round(args.device_memory_gb * 1e9),
        name=args.name,
        model=args.model,
        dtype=args.dtype,
        family=args.family,
        layer_types=args.layer_types,
        embedding_share=args.embedding_share,
    )
    report = import_directory(args.directory, options)
    rows = []
    if report.hardware is not None:
        path = save(report.hardware, args.out_dir / "hardware_profile.json")
        rows += _hardware_rows(report.hardware, path)
    if report.model is not None:
        path = save(report.model, args.out_dir / "model_profile.json")
        rows += _model_rows(report.model, path)
    if rows:
        print(table(["imported", "what", "written to"], rows))
    for note in report.notes:
        print(f"note: {note}")
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT if report.errors else 0


def _hardware_rows(hardware: HardwareProfile, path: Path) -> list[list[str]]:
    ops: dict[str, set[int]] = {}
    for entry in hardware.collectives:
        ops.setdefault(entry.op, set()).add(entry.group_size)
    rows = [
        [
            "hardware",
            f"{hardware.num_nodes} node(s) x {hardware.devices_per_node} GPUs, overlap "
            f"{hardware.overlap.compute:g}",
            str(path),
        ]
    ]
    for op, sizes in sorted(ops.items()):
        rows.append([f"  {op}", "groups " + ", ".join(map(str, sorted(sizes))), ""])
    return rows


def _model_rows(model: ModelProfile, path: Path) -> list[list[str]]:
    rows = [["model", f"{model.model} ({model.dtype})", str(path)]]
    for layer_type in model.layer_types:
        params = max((m.param_bytes for m in layer_type.memory if m.tp == 1), default=0)
        tps = sorted({m.tp for m in layer_type.memory})
        rows.append(
            [
                f"  {layer_type.layer_type}",
                f"{len(layer_type.timings)} timings, tp {'/'.join(map(str, tps))}, "
                f"params {human_bytes(params)} at tp 1",
                "",
            ]
        )
    return rows
