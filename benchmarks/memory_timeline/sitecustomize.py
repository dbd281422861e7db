"""Where a CPU rank's memory peak happens: a ``sitecustomize`` for ``partita train``.

With this folder on ``PYTHONPATH`` and ``MEMX=<label>`` set, every process of a run marks the
forward and backward of each layer (modules whose class name ends in Block, Embedding or
Head) and the optimizer step in the profiler timeline that ``partita.executor.memory``
already replays, and each measured window appends to ``/tmp/memx/trace_<label>_r<rank>.txt``:
the window's peak, the last mark before it with the 20 largest live blocks, then every mark
with the bytes live there and the 14 largest blocks. Blocks of one size repeating between
marks are what a layer keeps (this is how FSDP units holding their reduce-scatter buffers to
the end of the backward were found, 2026-12-07)::

    mkdir -p /tmp/memx
    MEMX=zero3 PYTHONPATH=benchmarks/memory_timeline partita train --plan plan.json \
        --model gpt-tiny --steps 2 --nproc 2 --run-dir /tmp/memx/run --overwrite

A debugging aid, not part of any package: it patches private functions of the executor's
meter and registers global module hooks, so it may need updating with torch.
"""

import os

if os.environ.get("MEMX"):
    import torch
    from torch.autograd.profiler import record_function
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    import partita.executor.memory as meter

    LAYER_SUFFIXES = ("Block", "Embedding", "Head")
    PREFIX = "memx:"

    def mark(text: str) -> None:
        with record_function(PREFIX + text):
            pass

    def hook(phase: str):
        def on(module, *_):
            if type(module).__name__.endswith(LAYER_SUFFIXES):
                mark(f"{phase}{type(module).__name__}@{id(module) % 1000}")

        return on

    torch.nn.modules.module.register_module_forward_pre_hook(hook("F>"))
    torch.nn.modules.module.register_module_forward_hook(hook("F<"))
    torch.nn.modules.module.register_module_full_backward_pre_hook(hook("B>"))
    torch.nn.modules.module.register_module_full_backward_hook(hook("B<"))
    register_optimizer_step_pre_hook(lambda *_: mark("OPT>"))
    register_optimizer_step_post_hook(lambda *_: mark("OPT<"))

    original_records = meter._records

    def records(events):
        marks = [
            (e.start_time_ns, -1, e.name) for e in meter._walk(events) if e.name.startswith(PREFIX)
        ]
        return sorted(original_records(events) + marks, key=lambda r: r[0])

    def largest(ledger, count):
        return sorted(ledger.live.values(), reverse=True)[:count]

    def stop(self):
        try:
            result = meter._disable_profiler()
        finally:
            self._detach()
        ledger, log, last, at_peak = self._ledger, [], "start", None
        for _, ptr, nbytes in records(result.experimental_event_tree()):
            if ptr == -1:
                last = nbytes[len(PREFIX) :]
                log.append((last, ledger.current, largest(ledger, 14)))
                continue
            before = ledger.peak
            if nbytes is None:
                ledger.free(ptr)
            else:
                ledger.alloc(ptr, nbytes)
            if ledger.peak > before:
                at_peak = (last, ledger.peak, largest(ledger, 20), len(ledger.live))
        rank = os.environ.get("RANK", "0")
        with open(f"/tmp/memx/trace_{os.environ['MEMX']}_r{rank}.txt", "a") as out:
            out.write(f"--- window peak {ledger.peak} at_peak {at_peak}\n")
            for name, current, top in log:
                out.write(f"{name:28} {current:9} {top}\n")
        return ledger.peak, ledger.current

    meter._CpuWindow.stop = stop
