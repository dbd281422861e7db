"""The plan search: the fastest layer-wise hybrid-parallel plan under a memory budget."""

# Schedules searched unless asked otherwise (here, not in ``space``, so that ``partita plan``'s
# arguments need no simulator import at start-up). ZB-H1 is priced without the per-pass cost
# of Partita's executor's weight passes, which make it slower than 1F1B there
# (docs/executor.md): searched only on request (``--schedules``).
DEFAULT_SCHEDULES = ("gpipe", "1f1b", "interleaved-1f1b")
# selective-op is searched on request (``--recompute``): it makes the search a fifth slower,
# and the profiles that measure it (model profile v5) are new.
DEFAULT_RECOMPUTE = ("none", "attention", "full")
