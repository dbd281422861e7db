"""A torchrun worker that fails as a real one can, for the launcher's tests: rank 0 prints
progress, then ``--fail`` says how the job ends (a rank's one-line error, an unforeseen
exception's traceback, or a hang until a signal)."""

from __future__ import annotations

import os
import sys
import time

rank = int(os.environ["RANK"])
how = sys.argv[sys.argv.index("--fail") + 1]
if rank == 0:
    print("progress: step 1/2", file=sys.stderr, flush=True)
if how == "hang":
    if rank == 0:
        print("progress: waiting", file=sys.stderr, flush=True)
    time.sleep(600)
time.sleep(0.5)  # rank 0's progress first
if rank == 1:
    if how == "error-line":
        print("partita train: error: [rank 1] the data ran out", file=sys.stderr, flush=True)
        raise SystemExit(2)
    raise RuntimeError("an unforeseen failure")
time.sleep(5)  # torchrun stops this rank when rank 1 fails
