"""Runs under torchrun: the cases of ``test_schedules_gloo``, in one process group.

argv: cases.json results.json. A case with a ``role`` is a checkpoint case
(``checkpoint_worker``: save, or resume under another plan); any other trains under its plan
and is compared with one process (``pipeline_worker``: losses and parameters).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checkpoint_worker
import pipeline_worker
from equality_worker import run_cases

from partita.executor.groups import ParallelGroups


def run_case(case: dict, groups: ParallelGroups) -> dict:
    if "role" in case:
        return checkpoint_worker.run_case(case, groups)
    return pipeline_worker.run_case(case, groups)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_cases(run_case)
