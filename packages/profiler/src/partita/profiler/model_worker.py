"""One torchrun rank of ``partita profile model --nproc N``: real tensor-parallel groups.

Started by ``model_command`` through the executor's ``launch``; the ranks measure each
configuration in groups of tp (on a CPU host only as many ranks as it has cores; the rest
wait), rank 0 writes the file and prints.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    from partita.executor.worker import device_and_backend
    from partita.profiler import model_command
    from partita.profiler.model_measure import RankGroups, host_cores
    from partita.profiler.model_run import profile_model
    from partita.profiler.model_summary import summary

    parser = argparse.ArgumentParser(prog="partita profile model (rank)")
    model_command.add_arguments(parser)
    args = parser.parse_args(argv)
    device, backend = device_and_backend()
    dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout))
    args.nproc = dist.get_world_size()
    try:
        settings = model_command.settings_from(args, device=device)
        groups = RankGroups(cores=host_cores(device))
        profile = profile_model(settings, groups)
        if groups.writer and not args.quiet:
            print(summary(profile))
        return 0
    except ValueError as error:
        if dist.get_rank() == 0:
            print(f"partita profile: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
