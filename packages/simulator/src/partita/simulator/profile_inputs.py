"""The profiles ``plan`` and ``simulate`` predict from: measured files, or a cluster spec.

``--hardware H --model-profile M`` read what the profiler measured; ``--cluster NAME|FILE``
derives both from a spec sheet and the model description (``specsheet``), so a plan can be
searched or simulated with no profile file at all.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from partita.formats import HardwareProfile, ModelDescription, ModelProfile, load
from partita.formats.common import Precision


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hardware", metavar="H", help="measured hardware profile")
    parser.add_argument("--model-profile", metavar="M", help="measured model profile")
    parser.add_argument(
        "--cluster",
        metavar="NAME|FILE",
        help="cluster spec preset (h100-sxm, a100-sxm-80g, cpu-gloo-local) or JSON file, "
        "instead of measured profiles",
    )


@dataclass(frozen=True)
class Profiles:
    hardware: HardwareProfile
    model_profile: ModelProfile
    origin: str  # "measured" or "spec sheet NAME", for the user


def load_profiles(
    args: argparse.Namespace,
    model: ModelDescription,
    *,
    world_size: int,
    precision: Precision | None,
) -> Profiles:
    """Measured profiles, or ones derived from ``--cluster`` for ``world_size`` devices at
    ``precision`` (bf16 on GPUs and fp32 on CPUs when None)."""
    measured = args.hardware is not None or args.model_profile is not None
    if measured and args.cluster is not None:
        raise ValueError("give either --cluster or --hardware with --model-profile, not both")
    if args.cluster is None:
        if args.hardware is None or args.model_profile is None:
            raise ValueError(
                "give --hardware H and --model-profile M (measured), or --cluster NAME|FILE "
                "(a spec sheet)"
            )
        return Profiles(
            load(args.hardware, HardwareProfile),
            load(args.model_profile, ModelProfile),
            origin="measured",
        )
    from partita.simulator.specsheet import (
        hardware_profile_from_spec,
        load_cluster_spec,
        model_profile_from_description,
    )
    from partita.simulator.whatif import cluster_variant

    spec = cluster_variant(load_cluster_spec(args.cluster), {}, world_size)
    dtype: Precision = precision or ("bf16" if spec.device_kind == "cuda" else "fp32")
    return Profiles(
        hardware_profile_from_spec(spec),
        model_profile_from_description(model, spec, dtype=dtype),
        origin=f"spec sheet {spec.name} ({dtype})",
    )
