"""The profiles ``plan`` and ``simulate`` predict from: measured files, or a cluster spec.

``--hardware H --model-profile M`` read what the profiler measured; ``--cluster
NAME|FILE|JSON [--nodes N]`` derives both from a spec sheet and the model description
(``specsheet``), so a plan can be searched or simulated with no profile file at all.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from partita.formats import HardwareProfile, ModelDescription, ModelProfile, load
from partita.formats.common import Precision

if TYPE_CHECKING:
    from partita.simulator.specsheet import ClusterSpec


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hardware", metavar="H", help="measured hardware profile")
    parser.add_argument("--model-profile", metavar="M", help="measured model profile")
    parser.add_argument(
        "--cluster",
        metavar="NAME|FILE|JSON",
        help="cluster spec preset (h100-sxm, a100-sxm-80g, cpu-gloo-local), JSON file or "
        'inline JSON (\'{"preset": "h100-sxm", "num_nodes": 16}\'), instead of measured profiles',
    )
    parser.add_argument(
        "--nodes", type=int, metavar="N", help="nodes of the --cluster spec (default: its own)"
    )


@dataclass(frozen=True)
class Profiles:
    hardware: HardwareProfile
    model_profile: ModelProfile
    origin: str  # "measured" or "spec sheet NAME (dtype)", for the user


def load_profiles(
    args: argparse.Namespace,
    model: ModelDescription,
    *,
    world_size: int | None,
    precision: Precision | None,
    precision_source: str = "--precision",
) -> Profiles:
    """Measured profiles, or ones derived from ``--cluster`` for ``world_size`` devices (None:
    all of the spec's, with ``--nodes``) at ``precision`` (bf16 on GPUs and fp32 on CPUs when
    None). A measured model profile of
    another precision than ``precision`` is refused: its times and memory would be the
    wrong ones (``precision_source`` names where the precision came from)."""
    measured = args.hardware is not None or args.model_profile is not None
    if measured and args.cluster is not None:
        raise ValueError("give either --cluster or --hardware with --model-profile, not both")
    if args.cluster is None:
        if args.nodes is not None:
            raise ValueError("--nodes sizes a --cluster spec; a measured profile has its own")
        if args.hardware is None or args.model_profile is None:
            raise ValueError(
                "give --hardware H and --model-profile M (measured), or --cluster NAME|FILE "
                "(a spec sheet)"
            )
        profile = load(args.model_profile, ModelProfile)
        if precision is not None and profile.dtype != precision:
            raise ValueError(
                f"{precision_source} {precision} differs from the model profile "
                f"{args.model_profile}, measured in {profile.dtype}: profile the model in "
                f"{precision}, or plan in {profile.dtype}"
            )
        return Profiles(load(args.hardware, HardwareProfile), profile, origin="measured")
    from partita.simulator.specsheet import (
        hardware_profile_from_spec,
        model_profile_from_description,
    )
    from partita.simulator.whatif import cluster_variant

    base = _spec(args)
    world_size = world_size or base.devices_per_node * base.num_nodes
    if world_size > base.devices_per_node * base.num_nodes and args.nodes is not None:
        raise ValueError(
            f"--nodes {args.nodes}: {world_size} devices need more than "
            f"{base.num_nodes} node(s) of {base.devices_per_node}"
        )
    spec = cluster_variant(base, {}, world_size)
    dtype: Precision = precision or ("bf16" if spec.device_kind == "cuda" else "fp32")
    return Profiles(
        hardware_profile_from_spec(spec),
        model_profile_from_description(model, spec, dtype=dtype),
        origin=f"spec sheet {spec.name} ({dtype})",
    )


def _spec(args: argparse.Namespace) -> ClusterSpec:
    from partita.simulator.specsheet import load_cluster_spec

    spec = load_cluster_spec(args.cluster)
    if args.nodes is None:
        return spec
    if args.nodes < 1:
        raise ValueError(f"--nodes: expected a positive number of nodes, got {args.nodes}")
    return spec.with_changes(num_nodes=args.nodes)
