"""One rank of a real-size plan under torch's fake process group: build the trainer (model on
meta, this rank's shards materialised on the host), then print what it holds as JSON.

argv: MODEL PLAN_JSON RANK. Collectives of the fake group return at once without data, so a
world of 64 ranks is one process here, rank by rank; nothing in the construction needs data
from another rank.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

from partita.executor.trainer import Trainer, TrainSettings, create_groups
from partita.formats import Plan, loads


def main() -> None:
    model, plan_file, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
    plan = loads(Path(plan_file).read_text(), Plan)
    torch.set_num_threads(1)
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=plan.world_size)
    device = torch.device("cpu")
    groups = create_groups(plan, model, rank=rank, device=device)
    trainer = Trainer(
        plan=plan, source=model, settings=TrainSettings(), groups=groups, device=device
    )
    held = 0
    for param in trainer.stage_model.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        assert local.device.type == "cpu", local.device
        held += local.numel() * local.element_size()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "stage": trainer.stage,
                "layers": trainer.stage_model.indices,
                "parameter_bytes": held,
                "peak_rss_bytes": peak_kib * 1024,
            }
        )
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
